"""Bad input gets a clear 4xx and changes nothing: no record, no poll job, no Spark driver."""

from __future__ import annotations

from typing import Any

import pytest

from poller.devstack import SparkStandalone
from tests.conftest import JobBody, ServiceFactory
from tests.support import ServiceProcess, driver_ids, poll_job_ids

# Has Spark's driver-id shape; the cluster does not know it.
ADOPTABLE = "driver-20000101000000-9999"


@pytest.fixture
def svc(start_service: ServiceFactory) -> ServiceProcess:
    return start_service()


def _bad_bodies(job: dict[str, Any]) -> list[tuple[str, dict[str, Any], int, str]]:
    """(name, request kwargs, expected status, a phrase the message must contain)."""
    return [
        (
            "malformed json",
            {"data": b'{"job": ', "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ("not an object", {"json": ["job"]}, 400, "JSON object"),
        ("unknown field", {"json": {"job": job, "colour": "red"}}, 422, "colour"),
        ("unknown job field", {"json": {"job": {**job, "mainClass": "x"}}}, 422, "mainClass"),
        ("neither", {"json": {"labels": {}}}, 422, "exactly one of"),
        ("both", {"json": {"job": job, "submission_id": ADOPTABLE}}, 422, "exactly one of"),
        ("bad request_id", {"json": {"request_id": "a b/c", "job": job}}, 422, "request_id"),
        ("long request_id", {"json": {"request_id": "x" * 129, "job": job}}, 422, "request_id"),
        ("dot request_id", {"json": {"request_id": ".", "job": job}}, 422, "request_id"),
        ("dot-dot request_id", {"json": {"request_id": "..", "job": job}}, 422, "request_id"),
        ("bad submission_id", {"json": {"submission_id": "../x"}}, 422, "submission_id"),
        ("dot submission_id", {"json": {"submission_id": "."}}, 422, "submission_id"),
        ("dot-dot submission_id", {"json": {"submission_id": ".."}}, 422, "submission_id"),
        ("not a driver id", {"json": {"submission_id": "driver-1"}}, 422, "submission_id"),
        ("unknown cluster", {"json": {"cluster": "nowhere", "job": job}}, 422, "unknown cluster"),
        (
            "jar without main_class",
            {"json": {"job": {"app_resource": "file:/x.jar"}}},
            422,
            "main_class",
        ),
        (
            "reserved property",
            {
                "json": {
                    "job": {**job, "spark_properties": {"spark.master": "spark://elsewhere:7077"}}
                }
            },
            422,
            "spark.master",
        ),
        (
            "the service's own property",
            {"json": {"job": {**job, "spark_properties": {"spark.poller.tag": "another"}}}},
            422,
            "spark.poller.tag",
        ),
        (
            "the service's own tag in java options",
            {
                "json": {
                    "job": {
                        **job,
                        "spark_properties": {
                            "spark.driver.extraJavaOptions": "-Dspark.poller.tag=x"
                        },
                    }
                }
            },
            422,
            "spark.poller.",
        ),
        (
            "too many labels",
            {"json": {"job": job, "labels": {f"k{i}": "v" for i in range(65)}}},
            422,
            "labels",
        ),
        ("label too long", {"json": {"job": job, "labels": {"k": "v" * 1025}}}, 422, "labels"),
        ("too many app_args", {"json": {"job": {**job, "app_args": ["a"] * 257}}}, 422, "app_args"),
        ("app_arg too long", {"json": {"job": {**job, "app_args": ["a" * 4097]}}}, 422, "app_args"),
        (
            "bad env var name",
            {"json": {"job": {**job, "environment_variables": {"A-B": "1"}}}},
            422,
            "environment_variables",
        ),
        ("label not a string", {"json": {"job": job, "labels": {"a": 1}}}, 422, "labels"),
        (
            "oversized body",
            {"json": {"job": job, "labels": {"pad": "x" * (1024 * 1024)}}},
            413,
            "body",
        ),
        (
            "unknown driver to adopt",
            {"json": {"submission_id": ADOPTABLE}},
            422,
            "no driver",
        ),
        (
            "spark refuses the resource",
            {"json": {"job": {**job, "app_resource": "file:/elsewhere/job.py"}}},
            422,
            "Spark refused",
        ),
    ]


def test_bad_submissions_are_refused_and_change_nothing(
    svc: ServiceProcess, spark: SparkStandalone, job_body: JobBody, service_env: dict[str, str]
) -> None:
    drivers_before = len(driver_ids(spark))
    for name, kwargs, status, phrase in _bad_bodies(job_body()):
        answer = svc.post("/submit", **kwargs)
        assert answer.status_code == status, f"{name}: {answer.status_code} {answer.text[:300]}"
        assert phrase in answer.text, f"{name}: {answer.text[:300]}"
        assert "Traceback" not in answer.text, name
        assert "\tat " not in answer.text, name
    assert svc.get("/jobs").json()["items"] == []
    assert poll_job_ids(service_env["POLLER_DATABASE_URL"]) == set()
    assert len(driver_ids(spark)) == drivers_before


def test_duplicate_request_id_is_409_without_a_second_submission(
    svc: ServiceProcess, spark: SparkStandalone, job_body: JobBody
) -> None:
    first = svc.post("/submit", json={"request_id": "dup", "job": job_body()})
    assert first.status_code == 202, first.text
    drivers = len(driver_ids(spark))
    again = svc.post("/submit", json={"request_id": "dup", "job": job_body()})
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]
    assert len(driver_ids(spark)) == drivers
    assert svc.get("/jobs").json()["total"] == 1


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/jobs/bad%20id", 422),
        ("delete", "/jobs/bad%20id", 422),
        ("get", "/jobs/%2E", 422),
        ("get", "/jobs/%2E%2E", 422),
        ("delete", "/jobs/%2E%2E", 422),
        ("get", "/jobs?limit=0", 422),
        ("get", "/jobs?state=SLEEPING", 422),
        ("get", "/jobs/unknown", 404),
        ("delete", "/jobs/unknown", 404),
    ],
)
def test_bad_lookups(svc: ServiceProcess, method: str, path: str, status: int) -> None:
    answer = getattr(svc, method)(path)
    assert answer.status_code == status, answer.text
    assert "detail" in answer.json()
