"""Request validation, event ids, and the shipped event JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from poller.schemas import SubmitRequest, event_id_for, event_json_schema

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
