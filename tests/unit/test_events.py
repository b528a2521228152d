"""The Kafka record we publish for an event (CloudEvents binary mode)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from poller.events import EVENT_TYPE, to_kafka_message
from poller.schemas import CompletionEvent, DriverState, event_id_for


def test_binary_mode_record() -> None:
    event = CompletionEvent(
        event_id=event_id_for("r-1"),
        request_id="r-1",
        submission_id="driver-1",
        cluster="default",
        state=DriverState.FAILED,
        spark_state="FAILED",
        message=None,
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
        completed_at=datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        polls=10,
        labels={"a": "b"},
    )
    record = to_kafka_message(event, "spark-poller/test")
    assert record.key == b"r-1"
    assert record.headers["ce_id"] == event.event_id.encode()
    assert record.headers["ce_type"] == EVENT_TYPE.encode()
    assert record.headers["ce_source"] == b"spark-poller/test"
    assert record.headers["ce_specversion"] == b"1.0"
    assert record.headers["ce_time"] == b"2026-01-01T00:05:00Z"
    assert record.headers["content-type"] == b"application/json"
    value = json.loads(record.value)
    assert value["state"] == "FAILED"
    assert value["labels"] == {"a": "b"}
    assert CompletionEvent.model_validate(value) == event
    # Built from the same record, a re-publish is byte-identical.
    assert to_kafka_message(event, "spark-poller/test") == record
