"""Request validation, event ids, and the shipped event JSON Schema."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from poller.schemas import (
    EVENT_SCHEMA_VERSION,
    CompletionEvent,
    DriverState,
    SubmitRequest,
    event_id_for,
    event_json_schema,
)
from tests.support import check_event

SCHEMA_FILE = Path(__file__).parents[2] / "poller" / "event.schema.json"
DRIVER = "driver-20261125101500-0003"


def test_exactly_one_of_job_or_submission_id() -> None:
    job = {"app_resource": "file:/a.py"}
    SubmitRequest.model_validate({"job": job})
    SubmitRequest.model_validate({"submission_id": DRIVER})
    for body in ({}, {"job": job, "submission_id": DRIVER}):
        with pytest.raises(ValidationError, match="exactly one of"):
            SubmitRequest.model_validate(body)


@pytest.mark.parametrize("request_id", ["", "a b", "a/b", "é", "x" * 129])
def test_request_id_charset(request_id: str) -> None:
    with pytest.raises(ValidationError):
        SubmitRequest.model_validate({"request_id": request_id, "submission_id": DRIVER})


def test_event_id_is_stable_per_request() -> None:
    assert event_id_for("r-1") == event_id_for("r-1")
    assert event_id_for("r-1") != event_id_for("r-2")


def test_shipped_json_schema_matches_the_model() -> None:
    """The shipped file is what consumers use; regenerate: spark-poller event-schema > FILE."""
    assert json.loads(SCHEMA_FILE.read_text()) == event_json_schema()


def test_the_readme_example_events_match_the_shipped_schema() -> None:
    """The README's events are ones a consumer can expect: every field declared, of this
    version."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## The completion event\n", 1)[1]
    examples = re.findall(r"```json\n(.*?)```", section.split("\n## ", 1)[0], flags=re.DOTALL)
    assert len(examples) == 2  # FINISHED and FAILED
    for example in examples:
        check_event(json.loads(example))


def test_an_undeclared_field_or_an_old_version_fails_the_check() -> None:
    """The check the suite runs on every event it reads can fail."""
    event = json.loads(
        CompletionEvent(
            event_id=event_id_for("r-1"),
            request_id="r-1",
            submission_id=DRIVER,
            cluster="default",
            state=DriverState.FINISHED,
            spark_state="FINISHED",
            message=None,
            submitted_at=datetime(2026, 11, 25, tzinfo=UTC),
            completed_at=datetime(2026, 11, 25, 0, 1, tzinfo=UTC),
            polls=2,
            labels={"team": "ingest"},
        ).model_dump_json()
    )
    assert check_event(event)["schema_version"] == EVENT_SCHEMA_VERSION
    for wrong in ({**event, "surprise": 1}, {**event, "schema_version": "2.0"}):
        with pytest.raises(AssertionError):
            check_event(wrong)
    with pytest.raises(AssertionError, match="labels"):
        check_event({**event, "labels": {"team": 1}})
