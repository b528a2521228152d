"""SIGTERM always exits in time, whatever is in flight, and loses nothing."""

from __future__ import annotations

import time

import pytest

from poller.devstack import Postgres, SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory, SlowSpark
from tests.databases import frozen
from tests.support import DelayingProxy, EventReader, driver_state

SHUTDOWN_TIMEOUT_S = 8


@pytest.fixture
def slow_status(slow_spark: SlowSpark) -> DelayingProxy:
    """Spark's REST API, but every status answer is held back 4 s."""
    return slow_spark("/v1/submissions/status/", 4)


def test_sigterm_while_a_poll_sees_its_driver_end(
    start_service: ServiceFactory,
    slow_status: DelayingProxy,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(
        POLLER_SPARK_REST_URL=slow_status.url, POLLER_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S)
    )
    answer = svc.post("/submit", json={"request_id": "ends-at-stop", "job": job_body(seconds=3)})
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    wait_for(lambda: driver_state(spark, submission_id) == "FINISHED", 60, "the driver to end")
    # A poll asks after the driver ended: it will hear FINISHED while the scheduler stops.
    asked_before = slow_status.arrived
    wait_for(lambda: slow_status.arrived > asked_before, 30, "a poll after the driver ended")
    started = time.monotonic()
    code = svc.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 20)
    took = time.monotonic() - started
    print(f"sigterm with a poll in flight: exit {code} after {took:.1f}s")
    assert code == 0, svc.logs()[-3000:]
    assert took < SHUTDOWN_TIMEOUT_S + 5

    # Nothing lost: the event is out now, or the next start publishes it; exactly one id.
    start_service(POLLER_SPARK_REST_URL=spark.rest_url)
    found = events.wait_for_keys({"ends-at-stop"})["ends-at-stop"]
    assert {e.value["state"] for e in found} == {"FINISHED"}
    assert len({e.value["event_id"] for e in found}) == 1


def test_sigterm_while_the_database_hangs(
    start_service: ServiceFactory, own_postgres: Postgres, job_body: JobBody
) -> None:
    """Every wait at a stop is bounded, the scheduler lease's own check included."""
    svc = start_service(POLLER_DATABASE_URL=own_postgres.url, POLLER_SHUTDOWN_TIMEOUT_S="5")
    answer = svc.post("/submit", json={"request_id": "frozen-db", "job": job_body(seconds=30)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: svc.job("frozen-db")["polls"] > 0, 60, "polling under way")
    with frozen(own_postgres):
        wait_for(
            lambda: svc.get("/readyz").json()["checks"]["database"] != "ok",
            30,
            "the hang to be noticed",
        )
        started = time.monotonic()
        code = svc.terminate(timeout_s=90)
        took = time.monotonic() - started
    print(f"sigterm with the database frozen: exit {code} after {took:.1f}s")
    assert took < 30, f"the stop took {took:.0f}s"
