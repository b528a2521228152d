"""Chaos: 100 mixed requests while the service is kill -9'ed and restarted at random moments.

Afterwards every request has exactly one distinct event_id, no event is for a request never made,
each event's state and submission_id match what the cluster says, and no poll job is left.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import requests

from poller.devstack import SparkStandalone, wait_for
from poller.schemas import JobSpec
from poller.spark import create_request_body
from tests.conftest import JobBody
from tests.support import (
    EventReader,
    PatientClient,
    ServiceProcess,
    check_drivers_request,
    driver_state,
    poll_job_ids,
    spark_tags,
)

REQUESTS = 100
KILLS = 12
SPARK_ENDED = {"FINISHED", "FAILED", "KILLED", "ERROR"}


def _has_a_core(spark: SparkStandalone, submission_id: str) -> bool:
    return driver_state(spark, submission_id) != "SUBMITTED"


def _plan(rng: random.Random) -> list[tuple[str, str]]:
    kinds = ["finish"] * 35 + ["fail"] * 25 + ["kill"] * 15 + ["adopt"] * 15 + ["cancel"] * 10
    assert len(kinds) == REQUESTS
    rng.shuffle(kinds)
    return [(f"chaos-{i:03d}-{kind}", kind) for i, kind in enumerate(kinds)]


def test_chaos_kill_9_at_random_moments(
    spark: SparkStandalone,
    service_env: dict[str, str],
    tmp_path: Path,
    job_body: JobBody,
    events: EventReader,
) -> None:
    rng = random.Random(20261125)
    svc = ServiceProcess(service_env, tmp_path / "service.log").start()
    try:
        _run_chaos(rng, svc, spark, service_env, job_body, events)
    finally:
        if svc.running():
            svc.terminate()


def _run_chaos(
    rng: random.Random,
    svc: ServiceProcess,
    spark: SparkStandalone,
    service_env: dict[str, str],
    job_body: JobBody,
    events: EventReader,
) -> None:
    client = PatientClient(svc)
    plan = _plan(rng)
    submitted: dict[str, str | None] = {}  # request_id -> submission_id (None: unknown outcome)
    kills = 0
    stop_killing = threading.Event()

    def killer() -> None:
        nonlocal kills
        while kills < KILLS and not stop_killing.is_set():
            time.sleep(rng.uniform(2, 9))
            svc.kill9()
            kills += 1
            svc.start()

    def act(request_id: str, kind: str, submission_id: str) -> None:
        """Once the driver runs: kill it on the cluster ("kill") or cancel it through us."""
        wait_for(partial(_has_a_core, spark, submission_id), 900, "a core for the driver", 0.5)
        if kind == "kill":  # the driver dies on the cluster, not through us
            requests.post(f"{spark.rest_url}/v1/submissions/kill/{submission_id}", timeout=10)
            return
        answer = client.call("delete", f"/jobs/{request_id}", params={"kill": "true"})
        assert answer.status_code in {200, 202, 409}, answer.text

    actors = ThreadPoolExecutor(max_workers=8)
    actions: list[Future[None]] = []
    chaos = threading.Thread(target=killer, name="killer")
    chaos.start()
    try:
        for request_id, kind in plan:
            if kind == "adopt":
                spec = JobSpec(**job_body(seconds=rng.choice([0, 2])))
                body = create_request_body(spec, spark.master_url, request_id, "4.3.0")
                created = requests.post(
                    f"{spark.rest_url}/v1/submissions/create", json=body, timeout=10
                ).json()
                payload: dict[str, Any] = {"submission_id": created["submissionId"]}
            else:
                seconds = 30 if kind in {"kill", "cancel"} else rng.choice([0, 1, 3])
                payload = {"job": job_body(seconds=seconds, exit_code=int(kind == "fail"))}
            answer = client.call("post", "/submit", json={"request_id": request_id, **payload})
            if answer.status_code == 409:  # our first try landed before a crash
                answer = client.call("get", f"/jobs/{request_id}")
            assert answer.status_code in {200, 202, 504}, answer.text
            submitted[request_id] = answer.json().get("submission_id")
            submission_id = submitted[request_id]
            if kind in {"kill", "cancel"} and submission_id is not None:
                actions.append(actors.submit(act, request_id, kind, submission_id))
            time.sleep(0.3)
        for action in actions:
            action.result()
        chaos.join()
    finally:
        stop_killing.set()
        chaos.join()
        actors.shutdown(wait=True)
    assert kills >= 10

    by_key = events.wait_for_keys(set(submitted), timeout_s=600)
    counts: Counter[str] = Counter()
    assert set(by_key) <= set(submitted), "an event for a request that was never made"
    tags = spark_tags(service_env["POLLER_DATABASE_URL"])
    for request_id, found in by_key.items():
        ids = {e.value["event_id"] for e in found}
        assert len(ids) == 1, f"{request_id}: {len(ids)} distinct event ids"
        counts["duplicates"] += len(found) - 1
        event = found[0].value
        counts[event["state"]] += 1
        if event["state"] == "SUBMIT_UNKNOWN":
            assert event["submission_id"] is None
            continue
        if check_drivers_request(spark, request_id, event, submitted[request_id], tags):
            counts["found"] += 1
        real = driver_state(spark, event["submission_id"])
        assert real in SPARK_ENDED, f"{request_id}: driver still {real}"
        if event["state"] == "CANCELLED":
            assert event["spark_state"] == real == "KILLED", request_id
        else:
            assert event["state"] == real, f"{request_id}: event {event['state']}, cluster {real}"
    wait_for(
        lambda: poll_job_ids(service_env["POLLER_DATABASE_URL"]) == set(),
        60,
        "poll jobs to be gone",
    )
    print(
        f"chaos: requests={len(submitted)} kills={kills} events={len(events.events)} "
        f"distinct={len(by_key)} duplicates={counts.pop('duplicates', 0)} lost=0 wrong=0 "
        f"states={dict(counts)}"
    )
