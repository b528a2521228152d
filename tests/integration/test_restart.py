"""Stops and crashes while polls are in flight lose nothing; start-up repairs the job table."""

from __future__ import annotations

import contextlib
import json
import random
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
import requests
import sqlalchemy as sa

from poller.db import create_db_engine
from poller.devstack import SparkStandalone, wait_for
from poller.scheduler import PollScheduler
from poller.schemas import DriverState
from poller.service import JOB_FUNC
from poller.store import RequestStore
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, ServiceProcess, driver_state, poll_job_ids

OVERDUE_REQUESTS = 20


def _submit_mix(svc: ServiceProcess, job_body: JobBody, prefix: str, count: int) -> dict[str, str]:
    """Submit ``count`` jobs of mixed outcome and length; returns request_id -> submission_id."""
    rng = random.Random(prefix)
    submitted = {}
    for i in range(count):
        request_id = f"{prefix}-{i}"
        body = job_body(seconds=rng.choice([1, 3, 5]), exit_code=rng.choice([0, 0, 1]))
        answer = svc.post("/submit", json={"request_id": request_id, "job": body})
        assert answer.status_code == 202, answer.text
        submitted[request_id] = answer.json()["submission_id"]
    return submitted


def _total_polls(svc: ServiceProcess) -> int:
    return sum(item["polls"] for item in svc.get("/jobs").json()["items"])


def _polled_since(svc: ServiceProcess, before: int) -> bool:
    return _total_polls(svc) > before


def _assert_exactly_one_true_event_each(
    events: EventReader, spark: SparkStandalone, submitted: dict[str, str]
) -> None:
    by_key = events.wait_for_keys(set(submitted), timeout_s=300)
    assert set(by_key) == set(submitted), "an event for a request that was never made"
    for request_id, found in by_key.items():
        assert len({e.value["event_id"] for e in found}) == 1, f"{request_id}: distinct event ids"
        event = found[0]
        assert event.value["submission_id"] == submitted[request_id]
        assert event.value["state"] == driver_state(spark, submitted[request_id]), request_id


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_restart_while_polling_loses_nothing(
    stop: str,
    start_service: ServiceFactory,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
    database_url: str,
) -> None:
    svc = start_service(POLLER_DATABASE_URL=database_url)
    submitted = _submit_mix(svc, job_body, f"restart-{stop[:4]}", 6)
    # Stop once the first driver has ended, so the stop lands mid-flight for the others.
    wait_for(lambda: any(svc.job(r)["polls"] > 0 for r in submitted), 60, "first polls")
    if stop == "kill -9":
        svc.kill9()
    else:
        started = time.monotonic()
        assert svc.terminate() == 0  # graceful: running polls finish, the producer is flushed
        assert time.monotonic() - started < 30
    # Every driver ends while the service is down: the restarted one must still report each.
    wait_for(
        lambda: all(driver_state(spark, s) in {"FINISHED", "FAILED"} for s in submitted.values()),
        120,
        "drivers to end while the service is down",
    )
    start_service(POLLER_DATABASE_URL=database_url)
    _assert_exactly_one_true_event_each(events, spark, submitted)
    wait_for(lambda: poll_job_ids(database_url) == set(), 30, "poll jobs to be removed")


def test_kill_9_repeatedly_mid_flight(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service()
    submitted = _submit_mix(svc, job_body, "crashy", 8)
    for _ in range(4):
        # Let this incarnation make at least one more status call, then crash it.
        before = _total_polls(svc)
        wait_for(partial(_polled_since, svc, before), 30, "another poll")
        svc.kill9()
        svc = start_service()
    _assert_exactly_one_true_event_each(events, spark, submitted)


def test_startup_recreates_lost_jobs_and_drops_orphans(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader, database_url: str
) -> None:
    svc = start_service(POLLER_DATABASE_URL=database_url)
    answer = svc.post("/submit", json={"request_id": "lost-job", "job": job_body(seconds=2)})
    assert answer.status_code == 202, answer.text
    assert svc.terminate() == 0

    engine = create_db_engine(database_url)
    with engine.begin() as conn:
        # A due row APScheduler cannot unpickle (it would silently delete it) ...
        conn.execute(
            sa.text(
                "UPDATE apscheduler_jobs SET job_state = :junk, next_run_time = :due"
                " WHERE id = 'lost-job'"
            ),
            {"junk": b"not a pickle", "due": time.time() - 60},
        )
    # ... and a poll job whose request does not exist.
    ghost = PollScheduler(engine, JOB_FUNC, 1.0, 1)
    ghost.start()
    ghost.add("ghost", first_run_at=datetime.now(UTC))
    ghost.shutdown()
    engine.dispose()
    assert poll_job_ids(database_url) == {"lost-job", "ghost"}

    svc = start_service(POLLER_DATABASE_URL=database_url)
    [event] = events.wait_for_keys({"lost-job"})["lost-job"]
    assert event.value["state"] == "FINISHED"
    assert "re-created 1 missing (lost-job), removed 1 orphan(s) (ghost)" in svc.logs()
    wait_for(lambda: poll_job_ids(database_url) == set(), 30, "poll jobs to be removed")


def test_a_month_of_downtime_does_not_stall_start_up(
    start_service: ServiceFactory, database_url: str
) -> None:
    """APScheduler 3 lists every missed run of an overdue job: 2.6 million per job for 30 days at
    1 s, under its job-store lock (about 2.5 s of CPU each here)."""
    engine = create_db_engine(database_url)
    store = RequestStore(engine)
    store.create_schema()
    jobs = PollScheduler(engine, JOB_FUNC, 1.0, 1)
    jobs.start()
    month_ago = datetime.now(UTC) - timedelta(days=30)
    request_ids = [f"overdue-{i}" for i in range(OVERDUE_REQUESTS)]
    for i, request_id in enumerate(request_ids):
        store.insert(request_id, "default", {})
        # Drivers this master never had: each poll just counts an unknown answer.
        store.mark_submitted(request_id, f"driver-20200101000000-{i:04d}", DriverState.RUNNING)
        jobs.add(request_id, first_run_at=month_ago)
    jobs.shutdown()
    engine.dispose()

    started = time.monotonic()
    svc = start_service(POLLER_DATABASE_URL=database_url, POLLER_LOST_AFTER_UNKNOWN_POLLS="1000")
    wait_for(
        lambda: all(svc.job(r)["polls"] > 0 for r in request_ids),
        60,
        "every overdue request to be polled",
        describe=lambda: str({r: svc.job(r)["polls"] for r in request_ids}),
    )
    took = time.monotonic() - started
    print(f"30 days down, {OVERDUE_REQUESTS} overdue polls: all polled {took:.1f}s after start")
    assert took < 15, f"start-up stalled for {took:.0f}s"
    ready = svc.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_a_cluster_removed_from_the_configuration(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    """Its requests are never polled against nothing: the start refuses, naming the cluster,
    until the operator either configures it again or retires it (its requests then end LOST)."""
    lab = json.dumps({"lab": {"rest_url": spark.rest_url, "master_url": spark.master_url}})
    svc = start_service(POLLER_CLUSTERS=lab)
    answer = svc.post(
        "/submit", json={"request_id": "on-lab", "cluster": "lab", "job": job_body(seconds=120)}
    )
    assert answer.status_code == 202, answer.text
    assert svc.terminate() == 0

    with contextlib.suppress(RuntimeError):  # it may die before or after answering /healthz
        svc = start_service()
    wait_for(lambda: not svc.running(), 30, "the start to be refused")
    assert svc.proc is not None
    assert svc.proc.returncode != 0
    assert "no longer configured: 'lab' (1)" in svc.logs()
    assert "POLLER_RETIRED_CLUSTERS" in svc.logs()
    assert "on-lab" not in {e.key for e in events.drain()}

    svc = start_service(POLLER_RETIRED_CLUSTERS="lab")
    [event] = events.wait_for_keys({"on-lab"})["on-lab"]
    assert event.value["state"] == "LOST"
    assert "'lab' was retired" in event.value["message"]
    requests.post(
        f"{spark.rest_url}/v1/submissions/kill/{answer.json()['submission_id']}", timeout=10
    )
