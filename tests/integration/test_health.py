"""Health answers at once, however busy the API's worker threads are."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import requests

from poller.devstack import SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory, SlowSpark
from tests.support import DelayingProxy, driver_ids

STUCK_SUBMITS = 45  # more than the API's worker threads


@pytest.fixture
def slow_create(slow_spark: SlowSpark) -> DelayingProxy:
    """Spark's REST API, but the answer to a create arrives 20 s after Spark acted on it: long
    enough for 30 to be held at once even when the master takes its creates slowly (a busy
    machine), well within the service's 30 s Spark timeout."""
    return slow_spark("/v1/submissions/create", 20)


def test_health_answers_while_every_worker_waits_on_spark(
    start_service: ServiceFactory,
    slow_create: DelayingProxy,
    spark: SparkStandalone,
    job_body: JobBody,
) -> None:
    svc = start_service(POLLER_SPARK_REST_URL=slow_create.url, POLLER_SPARK_TIMEOUT_S="30")
    drivers_before = driver_ids(spark)
    body = job_body()
    body["spark_properties"]["spark.driver.cores"] = "64"  # never runs: nothing to clean up

    def submit(i: int) -> None:
        with contextlib.suppress(requests.RequestException):
            requests.post(
                f"{svc.url}/submit", json={"request_id": f"busy-{i}", "job": body}, timeout=60
            )

    callers = [threading.Thread(target=submit, args=(i,)) for i in range(STUCK_SUBMITS)]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: slow_create.holding >= 30, 60, "submits to pile up at Spark")
        timings: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
        for _ in range(10):
            for path, seen in timings.items():
                started = time.monotonic()
                answer = requests.get(f"{svc.url}{path}", timeout=10)
                seen.append(time.monotonic() - started)
                assert answer.status_code == 200, answer.text
        worst = {path: max(seen) for path, seen in timings.items()}
        print(
            f"health with {slow_create.holding} submits held at Spark: "
            + ", ".join(f"{p} worst {w * 1000:.0f} ms" for p, w in worst.items())
        )
        assert all(w < 0.5 for w in worst.values()), worst
    finally:
        for caller in callers:
            caller.join(timeout=90)
    made = driver_ids(spark) - drivers_before
    for submission_id in made:
        requests.post(f"{spark.rest_url}/v1/submissions/kill/{submission_id}", timeout=10)
