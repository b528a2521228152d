"""Crashes and timeouts around Spark's create call: never lost, never silently run twice."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from poller.devstack import Postgres, SparkStandalone, wait_for
from poller.master_view import SHARED_VIEW_RETRY_S
from tests.conftest import JobBody, ServiceFactory, SlowSpark
from tests.support import (
    DelayingProxy,
    EventReader,
    ServiceProcess,
    SilentServer,
    ViewProxy,
    driver_ids,
    driver_state,
)


@pytest.fixture
def slow_create(slow_spark: SlowSpark) -> DelayingProxy:
    """Spark's REST API, but the answer to a create arrives 6 s after Spark acted on it."""
    return slow_spark("/v1/submissions/create", 6)


SilentMaster = Callable[[str], ServiceProcess]


@pytest.fixture
def silent_master(start_service: ServiceFactory) -> Iterator[SilentMaster]:
    """Starts the service on a master that takes every call and never answers, so each create
    times out after 1 s with the request's search after it lasting ``search_s``."""
    silent = SilentServer()

    def start(search_s: str) -> ServiceProcess:
        return start_service(
            POLLER_SPARK_REST_URL=silent.url,
            POLLER_SPARK_TIMEOUT_S="1",
            POLLER_RECOVERY_SEARCH_S=search_s,
        )

    yield start
    silent.close()


def _submit_in_background(svc: ServiceProcess, body: dict[str, Any]) -> threading.Thread:
    def call() -> None:
        with contextlib.suppress(requests.RequestException):  # the service dies under it
            svc.post("/submit", json=body)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_a_crash_mid_create_ends_with_the_real_drivers_state(
    start_service: ServiceFactory,
    slow_create: DelayingProxy,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """kill -9 while Spark's answer to the create is held back: after the restart, the driver
    Spark made is found by its tag, and the request ends as that driver did, with its id."""
    svc = start_service(POLLER_SPARK_REST_URL=slow_create.url)
    drivers_before = driver_ids(spark)
    caller = _submit_in_background(
        svc, {"request_id": "mid-create", "job": job_body(seconds=3, exit_code=3)}
    )
    # Spark has made the driver; its answer is still on the way back when the service dies.
    wait_for(lambda: len(driver_ids(spark) - drivers_before) == 1, 30, "Spark to create it")
    [driver] = driver_ids(spark) - drivers_before
    svc.kill9()
    caller.join()

    # Looked for once older than any create could last (a short Spark timeout keeps that short).
    svc = start_service(POLLER_SPARK_REST_URL=spark.rest_url, POLLER_SPARK_TIMEOUT_S="2")
    [event] = events.wait_for_keys({"mid-create"})["mid-create"]
    assert (event.value["state"], event.value["submission_id"]) == ("FAILED", driver)
    assert driver_state(spark, driver) == "FAILED"
    assert "resolved 1 interrupted submission" in svc.logs()
    assert f"found driver {driver} of mid-create" in svc.logs()
    record = svc.job("mid-create")
    assert (record["submission_id"], record["search_until"]) == (driver, None)

    retry = svc.post("/submit", json={"request_id": "mid-create", "job": job_body()})
    assert retry.status_code == 409
    assert "FAILED" in retry.json()["detail"]
    assert len(driver_ids(spark) - drivers_before) == 1, "the job ran twice"


def test_create_that_times_out_is_not_retried(
    start_service: ServiceFactory,
    slow_create: DelayingProxy,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(POLLER_SPARK_REST_URL=slow_create.url, POLLER_SPARK_TIMEOUT_S="2")
    drivers_before = driver_ids(spark)
    answer = svc.post("/submit", json={"request_id": "timed-out", "job": job_body()})
    assert answer.status_code == 504, answer.text
    assert "looked for on the cluster" in answer.json()["detail"]
    [driver] = driver_ids(spark) - drivers_before  # the create call was not repeated
    [event] = events.wait_for_keys({"timed-out"})["timed-out"]
    assert (event.value["state"], event.value["submission_id"]) == ("FINISHED", driver)
    assert len(driver_ids(spark) - drivers_before) == 1, "the create call was repeated"
    assert svc.job("timed-out")["state"] == "FINISHED"


def test_a_create_that_never_reached_spark_ends_unknown_after_the_search(
    silent_master: SilentMaster, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    """The create went to a master that never answers: no driver carries the request's tag, so
    after the search the request ends SUBMIT_UNKNOWN, saying what was looked at."""
    svc = silent_master("3")
    drivers_before = driver_ids(spark)
    answer = svc.post("/submit", json={"request_id": "never-landed", "job": job_body()})
    assert answer.status_code == 504, answer.text
    [event] = events.wait_for_keys({"never-landed"})["never-landed"]
    assert (event.value["state"], event.value["submission_id"]) == ("SUBMIT_UNKNOWN", None)
    assert "no driver on the cluster carries this request's tag" in event.value["message"]
    assert "not submitted again" in event.value["message"]
    assert driver_ids(spark) == drivers_before


def test_a_request_whose_driver_is_looked_for_can_be_cancelled(
    silent_master: SilentMaster, job_body: JobBody, events: EventReader
) -> None:
    svc = silent_master("600")
    answer = svc.post("/submit", json={"request_id": "given-up", "job": job_body()})
    assert answer.status_code == 504, answer.text
    searching = svc.job("given-up")
    assert (searching["phase"], searching["state"]) == ("submitting", "SUBMITTING")
    assert searching["search_until"] is not None
    gone = svc.delete("/jobs/given-up")
    assert gone.status_code in {200, 202}, gone.text
    [event] = events.wait_for_keys({"given-up"})["given-up"]
    assert (event.value["state"], event.value["submission_id"]) == ("CANCELLED", None)
    assert "neither tracked nor killed" in event.value["message"]
    record = svc.job("given-up")
    assert (record["phase"], record["search_until"]) == ("done", None)


@pytest.mark.parametrize("ended", [False, True], ids=["running", "ended"])
def test_a_cancel_that_kills_finds_the_driver_being_looked_for(
    start_service: ServiceFactory,
    slow_create: DelayingProxy,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
    ended: bool,
) -> None:
    """The create's answer was lost and no search so far could see the driver (the master's
    view was down). A cancel with kill is refused while it cannot look everywhere; then it
    looks there and then: a running driver is killed, one that ended keeps its own ending."""
    view = ViewProxy(spark.ui_url)
    view.mode = "broken"
    try:
        svc = start_service(
            POLLER_SPARK_REST_URL=slow_create.url,
            POLLER_SPARK_UI_URL=view.url,
            POLLER_SPARK_TIMEOUT_S="2",
            POLLER_POLL_INTERVAL_SECONDS="600",  # no second search before the cancel
            POLLER_RECOVERY_SEARCH_S="600",
        )
        drivers_before = driver_ids(spark)
        body = {"request_id": "kill-found", "job": job_body(0 if ended else 300)}
        assert svc.post("/submit", json=body).status_code == 504
        wait_for(lambda: "looking for the driver of kill-found" in svc.logs(), 30, "a search")
        [driver] = driver_ids(spark) - drivers_before
        want = "FINISHED" if ended else "RUNNING"
        wait_for(lambda: driver_state(spark, driver) == want, 60, f"the driver {want}")

        refused = svc.delete("/jobs/kill-found", params={"kill": "true"})
        assert refused.status_code == 409, refused.text
        assert "cannot be looked for everywhere yet" in refused.json()["detail"]
        failed_at = time.monotonic()
        assert svc.job("kill-found")["phase"] == "submitting"

        view.mode = None
        # The failed view answers for the searches until its retry time has passed.
        wait_for(lambda: time.monotonic() > failed_at + SHARED_VIEW_RETRY_S, 30, "retry time")
        gone = svc.delete("/jobs/kill-found", params={"kill": "true"})
        [event] = events.wait_for_keys({"kill-found"})["kill-found"]
    finally:
        view.close()
    if ended:
        assert gone.status_code == 409, gone.text
        assert "already ended (FINISHED)" in gone.json()["detail"]
        assert (event.value["state"], event.value["submission_id"]) == ("FINISHED", driver)
        return
    assert gone.status_code in {200, 202}, gone.text
    assert (event.value["state"], event.value["submission_id"]) == ("CANCELLED", driver)
    assert "kill accepted" in event.value["message"], event.value
    wait_for(lambda: driver_state(spark, driver) == "KILLED", 30, "Spark to kill the driver")


def test_database_lost_while_spark_creates_the_driver(
    start_service: ServiceFactory,
    slow_create: DelayingProxy,
    own_postgres: Postgres,
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """Spark made the driver but the database went away before it was recorded: the service
    keeps the driver's id and records it when the database is back; the event is the driver's."""
    svc = start_service(POLLER_SPARK_REST_URL=slow_create.url, POLLER_DATABASE_URL=own_postgres.url)
    answers: list[requests.Response] = []

    def submit() -> None:
        answers.append(svc.post("/submit", json={"request_id": "db-gone", "job": job_body()}))

    caller = threading.Thread(target=submit)
    caller.start()
    wait_for(lambda: slow_create.holding == 1, 30, "Spark to be creating the driver")
    own_postgres.stop_server()
    caller.join(timeout=60)
    [answer] = answers
    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["submission_id"]
    own_postgres.start()
    [event] = events.wait_for_keys({"db-gone"})["db-gone"]
    assert event.value["state"] == "FINISHED", event.value
    assert event.value["submission_id"] == submission_id
    assert driver_state(spark, submission_id) == "FINISHED"
