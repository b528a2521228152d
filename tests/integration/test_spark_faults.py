"""Spark going away, forgetting drivers, or never running them: no invented ends, clear events."""

from __future__ import annotations

import time

import requests

from poller.devstack import SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, driver_state


def test_master_down_then_restarted_without_recovery(
    own_spark: SparkStandalone,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(
        POLLER_SPARK_REST_URL=own_spark.rest_url,
        POLLER_SPARK_MASTER_URL=own_spark.master_url,
        POLLER_LOST_AFTER_UNKNOWN_POLLS="3",
    )
    answer = svc.post("/submit", json={"request_id": "forgotten", "job": job_body(seconds=300)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: svc.job("forgotten")["state"] == "RUNNING", 60, "driver running")

    own_spark.stop()  # master and worker gone: status calls now fail
    wait_for(
        lambda: svc.logs().count("unreachable") + svc.logs().count("backing off") >= 4,
        60,
        "failed polls",
    )
    assert "forgotten" not in {e.key for e in events.drain()}, "an end was invented"
    record = svc.job("forgotten")
    assert (record["phase"], record["state"]) == ("polling", "RUNNING")

    own_spark.start()  # a fresh master with no recovery: it has never heard of the driver
    back_at = time.monotonic()
    [event] = events.wait_for_keys({"forgotten"}, timeout_s=120)["forgotten"]
    print(
        f"spark master restart: LOST published {time.monotonic() - back_at:.1f}s after the "
        "master returned"
    )
    assert event.value["state"] == "LOST"
    assert event.value["spark_state"] == "RUNNING"
    assert "3 polls in a row" in event.value["message"]
    assert "backing off" in svc.logs()


def test_driver_stuck_in_submitted_times_out_and_is_killed(
    spark: SparkStandalone, start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_MAX_SUBMITTED_S="3", POLLER_KILL_ON_TIMEOUT="true")
    body = job_body()
    body["spark_properties"]["spark.driver.cores"] = "64"  # no worker will ever have room
    answer = svc.post("/submit", json={"request_id": "stuck", "job": body})
    assert answer.status_code == 202, answer.text
    [event] = events.wait_for_keys({"stuck"}, timeout_s=60)["stuck"]
    assert event.value["state"] == "TIMED_OUT"
    assert event.value["spark_state"] == "SUBMITTED"
    assert "still SUBMITTED after 3s" in event.value["message"]
    assert "driver killed" in event.value["message"]
    wait_for(
        lambda: driver_state(spark, answer.json()["submission_id"]) == "KILLED",
        30,
        "the stuck driver to be killed",
    )


def test_total_tracking_limit(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader, spark: SparkStandalone
) -> None:
    svc = start_service(POLLER_MAX_TRACKING_S="4")
    answer = svc.post("/submit", json={"request_id": "too-long", "job": job_body(seconds=120)})
    assert answer.status_code == 202, answer.text
    [event] = events.wait_for_keys({"too-long"}, timeout_s=60)["too-long"]
    assert event.value["state"] == "TIMED_OUT"
    assert "of tracking" in event.value["message"]
    # Not asked to kill: the driver itself is left alone.
    assert driver_state(spark, answer.json()["submission_id"]) in {"SUBMITTED", "RUNNING"}
    requests.post(
        f"{spark.rest_url}/v1/submissions/kill/{answer.json()['submission_id']}", timeout=10
    )


def test_cancel_with_kill_of_a_driver_spark_forgot(
    own_spark: SparkStandalone,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """The master restarted without recovery and no longer knows the driver: the user's cancel
    still ends CANCELLED (not LOST from the confirmation's own status calls)."""
    svc = start_service(
        POLLER_SPARK_REST_URL=own_spark.rest_url,
        POLLER_SPARK_MASTER_URL=own_spark.master_url,
        # Room for the polls while the master restarts; the cancel's own status calls used to
        # use it up and end the request LOST before the kill deadline.
        POLLER_LOST_AFTER_UNKNOWN_POLLS="60",
        POLLER_KILL_CONFIRM_TIMEOUT_S="300",
    )
    answer = svc.post("/submit", json={"request_id": "forgot", "job": job_body(seconds=300)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: svc.job("forgot")["state"] == "RUNNING", 60, "driver running")
    own_spark.stop()
    own_spark.start()  # a fresh master: it has never heard of the driver
    answers: list[requests.Response] = []

    def cancel() -> bool:  # 503 while the client still backs off from the outage
        answers.append(svc.delete("/jobs/forgot", params={"kill": "true"}))
        return answers[-1].status_code != 503

    wait_for(cancel, 90, "the cancel to reach the master", step_s=1)
    assert answers[-1].status_code in (200, 202), answers[-1].text
    [event] = events.wait_for_keys({"forgot"}, timeout_s=60)["forgot"]
    assert event.value["state"] == "CANCELLED", event.value
    assert "cancelled by request" in event.value["message"]
    assert "Spark no longer knows it" in event.value["message"]
