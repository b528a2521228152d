"""Why a driver ended, in its event: read from the real worker's logs of real failing drivers."""

from __future__ import annotations

import shutil
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests

from poller.devstack import FAST_DRIVER_JAVA_OPTIONS, SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, SilentServer, ViewProxy, driver_state

DRIVERS = Path(__file__).parents[1] / "drivers"
DRIVER_PROPERTIES = {
    "spark.pyspark.python": sys.executable,
    "spark.driver.memory": "256m",
    "spark.driver.extraJavaOptions": FAST_DRIVER_JAVA_OPTIONS,
}


@pytest.fixture(scope="module")
def failing_jobs(jobs_dir: Path) -> Path:
    """The failing drivers, where the session cluster lets them be loaded from."""
    for name in ("bad_partition.py", "spark_app.py"):
        shutil.copy(DRIVERS / name, jobs_dir / name)
    with zipfile.ZipFile(jobs_dir / "empty.jar", "w") as jar:  # a jar without the main class
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    return jobs_dir


def python_job(path: Path, *args: str) -> dict[str, Any]:
    return {
        "app_resource": f"file:{path}",
        "app_args": list(args),
        "spark_properties": DRIVER_PROPERTIES,
    }


def submitted(svc: Any, request_id: str, job: dict[str, Any]) -> str:
    answer = svc.post("/submit", json={"request_id": request_id, "job": job})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["submission_id"])


def test_a_python_driver_that_raises_says_which_exception_and_where(
    start_service: ServiceFactory, failing_jobs: Path, events: EventReader
) -> None:
    svc = start_service()
    submitted(svc, "bad-partition", python_job(failing_jobs / "bad_partition.py"))
    [event] = events.wait_for_keys({"bad-partition"})["bad-partition"]
    failure = event.value["failure"]
    assert event.value["state"] == "FAILED"
    assert failure["reason"] is not None, str(failure)
    assert "ValueError: bad partition 7" in failure["reason"]
    assert failure["exception_class"] == "ValueError"
    assert "in process_partition" in failure["frame"]
    assert failure["log_source"] == "stdout"
    assert failure["log_tail"].rstrip().endswith("ValueError: bad partition 7")
    assert failure["note"] is None
    # The record says the same: a consumer that missed the event can still ask.
    assert svc.job("bad-partition")["failure"] == failure


def test_a_jvm_driver_without_its_main_class_names_the_class(
    start_service: ServiceFactory, failing_jobs: Path, events: EventReader
) -> None:
    svc = start_service()
    job = {
        "app_resource": f"file:{failing_jobs / 'empty.jar'}",
        "main_class": "com.example.NoSuchJob",
        "spark_properties": DRIVER_PROPERTIES,
    }
    submitted(svc, "no-main-class", job)
    [event] = events.wait_for_keys({"no-main-class"})["no-main-class"]
    failure = event.value["failure"]
    assert event.value["state"] == "FAILED"
    assert "com.example.NoSuchJob" in failure["reason"]
    assert failure["exception_class"] == "java.lang.ClassNotFoundException"
    assert failure["log_source"] == "stderr"
    assert failure["note"] is None


def test_a_driver_killed_in_spark_says_it_was_killed(
    start_service: ServiceFactory, spark: SparkStandalone, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service()
    driver = submitted(svc, "killed-in-spark", job_body(seconds=120))
    wait_for(lambda: driver_state(spark, driver) == "RUNNING", 60, "driver running")
    time.sleep(1)  # let it start its Python process: a kill then ends a running program
    killed = requests.post(f"{spark.rest_url}/v1/submissions/kill/{driver}", timeout=10)
    assert killed.json()["success"] is True
    [event] = events.wait_for_keys({"killed-in-spark"})["killed-in-spark"]
    assert event.value["state"] == "KILLED"
    assert "killed" in event.value["failure"]["reason"].lower()
    assert event.value["failure"]["exception_class"] is None


def test_an_error_of_the_cluster_carries_sparks_message(
    start_service: ServiceFactory, failing_jobs: Path, events: EventReader
) -> None:
    """A resource that is not there: the worker fails to fetch it, and Spark says so (ERROR);
    the driver's log is empty, so Spark's message is the reason."""
    svc = start_service()
    submitted(svc, "absent-resource", python_job(failing_jobs / "absent.py"))
    [event] = events.wait_for_keys({"absent-resource"})["absent-resource"]
    assert event.value["state"] == "ERROR"
    reason = event.value["failure"]["reason"]
    assert "NoSuchFileException" in reason, event.value["failure"]
    assert str(failing_jobs / "absent.py") in reason


# A SparkContext needs 450 MB at least, on the driver and on each executor.
APP_PROPERTIES = {
    **DRIVER_PROPERTIES,
    "spark.driver.memory": "512m",
    "spark.executor.memory": "512m",
    "spark.cores.max": "1",
    "spark.ui.enabled": "false",
}


@pytest.mark.parametrize(("ending", "state"), [("ok", "FINISHED"), ("fail", "FAILED")])
def test_an_event_names_the_application_the_driver_ran(
    start_service: ServiceFactory,
    failing_jobs: Path,
    events: EventReader,
    spark: SparkStandalone,
    ending: str,
    state: str,
) -> None:
    """Linked by the name the driver was submitted with (FINISHED), or by its log (FAILED)."""
    svc = start_service()
    request_id = f"spark-app-{ending}"
    job = {**python_job(failing_jobs / "spark_app.py", ending), "spark_properties": APP_PROPERTIES}
    submitted(svc, request_id, job)
    [event] = events.wait_for_keys({request_id}, timeout_s=240)[request_id]
    assert event.value["state"] == state, event.value
    apps = cast(list[dict[str, Any]], spark.cluster_state()["completedapps"])
    [app_id] = [app["id"] for app in apps if app["name"] == request_id]
    assert event.value["spark_app"] == {
        "id": app_id,
        "ui_url": f"{spark.ui_url}/app/?appId={app_id}",
    }


def test_a_finished_driver_has_no_failure(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service()
    submitted(svc, "fine", job_body(seconds=0))
    [event] = events.wait_for_keys({"fine"})["fine"]
    assert event.value["state"] == "FINISHED"
    assert event.value["failure"] is None


@pytest.fixture
def hung_workers(spark: SparkStandalone) -> Iterator[tuple[ViewProxy, SilentServer]]:
    """The master's view, with every worker's web UI at an address that never answers."""
    silent = SilentServer()
    view = ViewProxy(spark.ui_url)
    view.worker_ui = silent.url
    yield view, silent
    view.close()
    silent.close()


def test_a_worker_that_does_not_answer_delays_the_event_by_the_budget_at_most(
    start_service: ServiceFactory,
    failing_jobs: Path,
    spark: SparkStandalone,
    events: EventReader,
    hung_workers: tuple[ViewProxy, SilentServer],
) -> None:
    view, silent = hung_workers
    svc = start_service(POLLER_SPARK_UI_URL=view.url, POLLER_FAILURE_LOOKUP_S="1.5")
    ids = ["hung-1", "hung-2"]
    drivers = {
        rid: submitted(svc, rid, python_job(failing_jobs / "bad_partition.py")) for rid in ids
    }
    ended: dict[str, float] = {}  # when each driver was seen FAILED here (wall clock)

    def both_ended() -> bool:
        for rid, driver in drivers.items():
            if rid not in ended and driver_state(spark, driver) == "FAILED":
                ended[rid] = time.time()
        return len(ended) == len(drivers)

    wait_for(both_ended, 120, "both drivers failed", step_s=0.05)
    by_key = events.wait_for_keys(set(ids))
    for rid in ids:
        [event] = by_key[rid]
        failure = event.value["failure"]
        assert event.value["state"] == "FAILED"
        assert failure["reason"] is None
        assert failure["log_tail"] is None
        assert f"worker {silent.url}" in failure["note"], failure
        # Seen within a poll interval, then the budget for the log at most (and 1 s to spare).
        late = event.timestamp_ms / 1000 - ended[rid]
        assert late <= 1 + 1.5 + 1.0, (rid, late)
