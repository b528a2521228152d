"""Fuzz the API from its own OpenAPI document: no 5xx, answers match the schema, nothing changes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from poller.devstack import KafkaBroker, SparkStandalone
from tests.conftest import base_env
from tests.support import ServiceProcess

CASES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed_service(
    spark: SparkStandalone, kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One service for every operation, so a state change by any of them would show."""
    workdir = tmp_path_factory.mktemp("fuzz")
    kafka.create_topic("fuzz-events")
    svc = ServiceProcess(base_env(spark, kafka, "fuzz-events", workdir), workdir / "service.log")
    yield svc.start()
    svc.terminate()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_api_survives_fuzzing(fuzzed_service: ServiceProcess) -> None:
    """Every operation of /openapi.json, 150 generated cases each, through hypothesis."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_service.url}/openapi.json")
    cases: Counter[str] = Counter()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()

        @given(operation.as_strategy())
        @settings(
            max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case: Case[Any]) -> None:
            cases[f"{case.method} {case.path}"] += 1
            case.call_and_validate(base_url=fuzzed_service.url, checks=CHECKS)

        fuzz()
    print(f"fuzz cases run: {sum(cases.values())} {dict(cases)}")
    assert len(cases) >= 5
    # Every case was refused or read-only: not one record, and no stack trace in the log.
    assert fuzzed_service.get("/jobs").json()["total"] == 0
    assert "Traceback" not in fuzzed_service.logs()
