"""Ids are ids: never "." or "..", and a driver to adopt has Spark's driver-id shape."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from poller.schemas import REQUEST_ID_PATTERN, SubmitRequest

DRIVER = "driver-20261122192106-0000"


@pytest.mark.parametrize("request_id", [".", "..", "", "a/b", "x" * 129])
def test_request_id_refuses_path_words(request_id: str) -> None:
    with pytest.raises(ValidationError, match="request_id"):
        SubmitRequest.model_validate({"request_id": request_id, "submission_id": DRIVER})
    assert re.fullmatch(REQUEST_ID_PATTERN, request_id) is None  # the same for GET/DELETE paths


@pytest.mark.parametrize(
    "request_id", ["...", ".a", "..a", "a.", "a..b", "_", "-", "x" * 128, "." + "x" * 127]
)
def test_request_id_keeps_every_other_name(request_id: str) -> None:
    SubmitRequest.model_validate({"request_id": request_id, "submission_id": DRIVER})
    assert re.fullmatch(REQUEST_ID_PATTERN, request_id)


@pytest.mark.parametrize(
    "submission_id",
    [
        ".",
        "..",
        "driver-1",
        "driver-2026112219210-0000",
        "driver-20261122192106-000",
        "driver-20261122192106-12345678901",
        "app-20261122192106-0000",
        f"{DRIVER}/x",
        f" {DRIVER}",
        f"{DRIVER}\n",
    ],
)
def test_submission_id_has_sparks_driver_shape(submission_id: str) -> None:
    with pytest.raises(ValidationError, match="submission_id"):
        SubmitRequest.model_validate({"submission_id": submission_id})


@pytest.mark.parametrize("submission_id", [DRIVER, "driver-20261122192106-12345"])
def test_real_driver_ids_are_accepted(submission_id: str) -> None:
    assert SubmitRequest.model_validate({"submission_id": submission_id}).submission_id
