"""DELETE /jobs/{request_id}: stops polling, publishes CANCELLED, optionally kills the driver."""

from __future__ import annotations

import os
import signal
import threading
import time
import zlib

import requests

from poller.devstack import SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import DelayingProxy, EventReader, driver_state, poll_job_ids


def test_cancel_stops_polling_and_publishes_cancelled(
    start_service: ServiceFactory,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
    database_url: str,
) -> None:
    svc = start_service(POLLER_DATABASE_URL=database_url)
    answer = svc.post(
        "/submit",
        json={"request_id": "cancel-me", "labels": {"k": "v"}, "job": job_body(seconds=60)},
    )
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: svc.job("cancel-me")["polls"] >= 2, 30, "two polls")

    cancelled = svc.delete("/jobs/cancel-me")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "CANCELLED"
    [event] = events.wait_for_keys({"cancel-me"})["cancel-me"]
    assert event.value["state"] == "CANCELLED"
    assert event.value["submission_id"] == submission_id
    assert event.value["labels"] == {"k": "v"}
    assert poll_job_ids(database_url) == set()

    polls = svc.job("cancel-me")["polls"]
    time.sleep(3.5)  # an observation window of three poll intervals: no status call may happen
    assert svc.job("cancel-me")["polls"] == polls
    assert driver_state(spark, submission_id) == "RUNNING"  # not killed: kill was not asked

    assert svc.delete("/jobs/cancel-me").status_code == 409
    assert svc.delete("/jobs/never-was").status_code == 404
    assert len(events.drain()) == 1
    requests.post(f"{spark.rest_url}/v1/submissions/kill/{submission_id}", timeout=10)


def test_cancel_with_kill_ends_the_driver_killed(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service()
    answer = svc.post("/submit", json={"request_id": "kill-me", "job": job_body(seconds=60)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: driver_state(spark, submission_id) == "RUNNING", 60, "driver running")

    cancelled = svc.delete("/jobs/kill-me", params={"kill": "true"})
    assert cancelled.status_code == 200, cancelled.text
    assert "kill accepted by Spark" in cancelled.json()["message"]
    assert cancelled.json()["phase"] == "done"
    assert driver_state(spark, submission_id) == "KILLED"  # confirmed before the event went out
    [event] = events.wait_for_keys({"kill-me"})["kill-me"]
    assert event.value["state"] == "CANCELLED"
    assert event.value["spark_state"] == "KILLED"
    assert "driver ended KILLED" in event.value["message"]


def test_cancel_with_kill_publishes_once_when_spark_never_confirms(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    """A frozen worker never reports the kill: the poll job ends the wait at the deadline."""
    svc = start_service(POLLER_KILL_CONFIRM_TIMEOUT_S="5")  # past the inline wait
    answer = svc.post("/submit", json={"request_id": "kill-unconfirmed", "job": job_body(60)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: driver_state(spark, submission_id) == "RUNNING", 60, "driver running")

    assert spark.worker is not None
    os.kill(spark.worker.pid, signal.SIGSTOP)  # the master keeps the driver RUNNING
    try:
        cancelled = svc.delete("/jobs/kill-unconfirmed", params={"kill": "true"})
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["phase"] == "cancelling"
        assert svc.delete("/jobs/kill-unconfirmed").status_code == 409
        [event] = events.wait_for_keys({"kill-unconfirmed"})["kill-unconfirmed"]
        assert driver_state(spark, submission_id) == "RUNNING"
    finally:
        os.kill(spark.worker.pid, signal.SIGCONT)
    assert event.value["state"] == "CANCELLED"
    assert event.value["spark_state"] == "RUNNING"
    assert "Spark did not confirm the kill within 5s" in event.value["message"]
    assert svc.job("kill-unconfirmed")["phase"] == "done"

    # The thawed worker carries the kill out; no second event follows it.
    wait_for(lambda: driver_state(spark, submission_id) == "KILLED", 30, "driver killed")
    # A quiet spell of two poll intervals, in which a stray second event would show.
    assert [e.key for e in events.drain(timeout_s=2.0)] == ["kill-unconfirmed"]


def test_kill_deadline_holds_while_spark_is_down(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    """Spark stops answering after it took the kill: the event still comes at the deadline."""
    proxy = DelayingProxy(spark.rest_url, "/no-delay", delay_s=0)
    svc = start_service(POLLER_SPARK_REST_URL=proxy.url, POLLER_KILL_CONFIRM_TIMEOUT_S="5")
    answer = svc.post("/submit", json={"request_id": "kill-then-down", "job": job_body(60)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: driver_state(spark, submission_id) == "RUNNING", 60, "driver running")
    assert spark.worker is not None
    os.kill(spark.worker.pid, signal.SIGSTOP)  # the kill is taken but never confirmed
    try:
        cancelled = svc.delete("/jobs/kill-then-down", params={"kill": "true"})
        assert cancelled.status_code == 202, cancelled.text
        proxy.close()  # and from now on Spark is unreachable
        [event] = events.wait_for_keys({"kill-then-down"}, timeout_s=60)["kill-then-down"]
    finally:
        os.kill(spark.worker.pid, signal.SIGCONT)
    assert event.value["state"] == "CANCELLED"
    assert "Spark did not confirm the kill within 5s" in event.value["message"]
    wait_for(lambda: driver_state(spark, submission_id) == "KILLED", 30, "driver killed")


def _same_stripe_ids() -> tuple[str, str]:
    """Two request ids that shared a lock when locks were striped by crc32 % 64."""
    first = "stripe-a"
    stripe = zlib.crc32(first.encode()) % 64
    second = next(
        f"stripe-b{i}" for i in range(10_000) if zlib.crc32(f"stripe-b{i}".encode()) % 64 == stripe
    )
    return first, second


def test_a_slow_kill_does_not_hold_up_another_request(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody
) -> None:
    slow_kill = DelayingProxy(spark.rest_url, "/v1/submissions/kill/", delay_s=6)
    try:
        svc = start_service(POLLER_SPARK_REST_URL=slow_kill.url)
        slow, other = _same_stripe_ids()
        submitted = {}
        for request_id in (slow, other):
            answer = svc.post("/submit", json={"request_id": request_id, "job": job_body(60)})
            assert answer.status_code == 202, answer.text
            submitted[request_id] = answer.json()["submission_id"]
        killer = threading.Thread(
            target=svc.delete, args=(f"/jobs/{slow}",), kwargs={"params": {"kill": "true"}}
        )
        killer.start()
        wait_for(lambda: slow_kill.holding == 1, 30, "the slow kill to be under way")
        started = time.monotonic()
        cancelled = svc.delete(f"/jobs/{other}")
        took = time.monotonic() - started
        print(f"cancel beside a slow kill: {took * 1000:.0f} ms")
        assert cancelled.status_code == 200, cancelled.text
        assert took < 2.0, f"the cancel waited {took:.1f}s behind another request's kill"
        killer.join(timeout=30)
    finally:
        slow_kill.close()
    requests.post(f"{spark.rest_url}/v1/submissions/kill/{submitted[other]}", timeout=10)
