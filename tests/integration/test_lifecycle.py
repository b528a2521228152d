"""Submit, poll, publish, remove: against real Spark, Kafka, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import cast

import requests

from poller.devstack import SparkStandalone, wait_for
from poller.schemas import event_id_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, driver_state, poll_job_ids

EXPECTED_HEADERS = {"ce_id", "ce_type", "ce_source", "ce_specversion", "ce_time", "content-type"}


def test_success_and_failure_each_publish_one_event(
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
    database_url: str,
    spark: SparkStandalone,
) -> None:
    svc = start_service(POLLER_DATABASE_URL=database_url)
    ok = svc.post(
        "/submit",
        json={
            "request_id": "ok-1",
            "labels": {"team": "a", "run": "1"},
            "job": job_body(seconds=2),
        },
    )
    bad = svc.post(
        "/submit",
        json={"request_id": "bad-1", "labels": {"team": "b"}, "job": job_body(exit_code=3)},
    )
    assert ok.status_code == 202, ok.text
    assert bad.status_code == 202, bad.text
    assert ok.json()["state"] == "SUBMITTED"
    assert ok.json()["submission_id"].startswith("driver-")

    by_key = events.wait_for_keys({"ok-1", "bad-1"})
    [worker_id] = [w["id"] for w in cast(list[dict[str, str]], spark.cluster_state()["workers"])]
    wait_for(lambda: svc.job("bad-1")["phase"] == "done", 30, "bad-1 done")
    wait_for(lambda: svc.job("ok-1")["phase"] == "done", 30, "ok-1 done")

    for request_id, expected_state, labels, created in [
        ("ok-1", "FINISHED", {"team": "a", "run": "1"}, ok.json()),
        ("bad-1", "FAILED", {"team": "b"}, bad.json()),
    ]:
        [event] = by_key[request_id]
        assert event.value["state"] == expected_state
        assert event.value["spark_state"] == expected_state
        assert event.value["submission_id"] == created["submission_id"]
        assert event.value["labels"] == labels
        assert event.value["cluster"] == "default"
        assert event.value["event_id"] == event_id_for(request_id)
        assert event.value["polls"] >= 1
        assert set(event.headers) >= EXPECTED_HEADERS
        assert event.headers["ce_id"] == event.value["event_id"]
        assert event.headers["ce_specversion"] == "1.0"
        assert event.headers["content-type"] == "application/json"
        # Where and how long it ran: Spark's one worker; a REST status call every second, so an
        # ending is seen within a second of happening.
        assert event.value["worker"] == {"id": worker_id, "host": "127.0.0.1"}
        assert event.value["detection_delay_bound_s"] == 1.0
        record = svc.job(request_id)
        assert record["state"] == expected_state
        assert record["event_id"] == event.value["event_id"]
        assert record["next_poll_at"] is None
    assert poll_job_ids(database_url) == set()
    assert sorted(e.key for e in events.drain()) == ["bad-1", "ok-1"]
    # The two-second job was seen running: from then to its ending, at least its two seconds.
    [ran] = by_key["ok-1"]
    started, completed = (
        datetime.fromisoformat(ran.value[k]) for k in ("started_at", "completed_at")
    )
    assert started <= completed
    assert 2.0 <= ran.value["duration_s"] == round((completed - started).total_seconds(), 3)


def test_adopted_driver_yields_its_event(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    from poller.schemas import JobSpec
    from poller.spark import create_request_body

    def submit_straight_to_spark(seconds: float) -> str:
        body = create_request_body(
            JobSpec(**job_body(seconds=seconds)), spark.master_url, "adopted", "4.3.0"
        )
        answer = requests.post(f"{spark.rest_url}/v1/submissions/create", json=body, timeout=10)
        return str(answer.json()["submissionId"])

    running = submit_straight_to_spark(2)
    finished = submit_straight_to_spark(0)
    wait_for(lambda: driver_state(spark, finished) == "FINISHED", 60, "driver to finish")

    svc = start_service()
    for request_id, submission_id in [("adopt-run", running), ("adopt-done", finished)]:
        answer = svc.post(
            "/submit", json={"request_id": request_id, "submission_id": submission_id}
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["submission_id"] == submission_id

    by_key = events.wait_for_keys({"adopt-run", "adopt-done"})
    assert [e.value["submission_id"] for e in by_key["adopt-run"]] == [running]
    assert [e.value["submission_id"] for e in by_key["adopt-done"]] == [finished]
    assert {e.value["state"] for e in events.events} == {"FINISHED"}


def test_twenty_concurrent_requests_each_get_their_own_event(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_SCHEDULER_THREADS="4")
    exit_codes = [0, 1, 0, 2, 0] * 4

    def submit(i: int) -> requests.Response:
        body = {
            "request_id": f"many-{i}",
            "labels": {"expect_exit": str(exit_codes[i])},
            "job": job_body(seconds=i % 3, exit_code=exit_codes[i]),
        }
        return svc.post("/submit", json=body)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert [a.status_code for a in answers] == [202] * 20, [a.text for a in answers]
    submission_ids = {a.json()["request_id"]: a.json()["submission_id"] for a in answers}
    assert len(set(submission_ids.values())) == 20

    by_key = events.wait_for_keys(set(submission_ids), timeout_s=400)
    for request_id, found in by_key.items():
        [event] = found
        expected = "FINISHED" if event.value["labels"]["expect_exit"] == "0" else "FAILED"
        assert event.value["state"] == expected, request_id
        assert event.value["submission_id"] == submission_ids[request_id]
        assert driver_state(spark, submission_ids[request_id]) == expected


def test_second_named_cluster(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    clusters = f'{{"lab": {{"rest_url": "{spark.rest_url}", "master_url": "{spark.master_url}"}}}}'
    svc = start_service(POLLER_CLUSTERS=clusters)
    answer = svc.post("/submit", json={"request_id": "lab-1", "cluster": "lab", "job": job_body()})
    assert answer.status_code == 202, answer.text
    [event] = events.wait_for_keys({"lab-1"})["lab-1"]
    assert event.value["cluster"] == "lab"
    assert event.value["state"] == "FINISHED"


def test_generated_request_id_and_listing(start_service: ServiceFactory, job_body: JobBody) -> None:
    svc = start_service()
    answer = svc.post("/submit", json={"job": job_body(seconds=30)})
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["request_id"]
    uuid.UUID(request_id)  # generated when absent

    record = svc.job(request_id)
    assert record["phase"] == "polling"
    assert record["next_poll_at"] is not None
    listed = svc.get("/jobs", params={"limit": 10}).json()
    assert [item["request_id"] for item in listed["items"]] == [request_id]
    assert listed["total"] == 1
    assert "spark_tag" not in record
    assert "spark_tag" not in listed["items"][0]
    assert svc.get("/jobs", params={"state": "FINISHED"}).json()["items"] == []
    assert svc.get("/jobs/nope").status_code == 404
    assert svc.delete(f"/jobs/{request_id}", params={"kill": "true"}).status_code == 200
