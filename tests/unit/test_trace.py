"""W3C trace context from a submit's headers to the completion event's CloudEvents headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from poller.events import to_kafka_message
from poller.schemas import CompletionEvent, DriverState, TraceContext, trace_context

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_kept_with_its_tracestate() -> None:
    assert trace_context(VALID, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == TraceContext(
        traceparent=VALID, tracestate="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )
    assert trace_context(f"  {VALID} ", None) == TraceContext(traceparent=VALID)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        VALID.upper(),  # hex must be lower case
        "ff" + VALID[2:],  # version ff is invalid
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent id
        VALID + "-extra",  # version 00 has exactly four fields
        VALID[:-1],
        VALID + "\n" + VALID,
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str) -> None:
    assert trace_context(value, "a=b") is None


def test_a_later_version_keeps_what_this_version_reads() -> None:
    later = "cc" + VALID[2:] + "-what-the-future-adds"
    assert trace_context(later, None) == TraceContext(traceparent=VALID)
    assert trace_context("cc" + VALID[2:] + "x", None) is None


@pytest.mark.parametrize("state", ["", "  ", "a=b\x00", "a=" + "x" * 600, "é=1"])
def test_an_odd_tracestate_is_dropped_not_the_trace(state: str) -> None:
    assert trace_context(VALID, state) == TraceContext(traceparent=VALID)


def test_the_event_carries_the_trace_as_cloudevents_extension_headers() -> None:
    event = CompletionEvent(
        event_id="d58e4f0a-950b-57fe-8831-5697fbe9288b",
        request_id="r-1",
        submission_id="driver-20261125121010-0000",
        cluster="default",
        state=DriverState.FINISHED,
        spark_state="FINISHED",
        message=None,
        submitted_at=datetime(2026, 11, 25, 12, 10, tzinfo=UTC),
        completed_at=datetime(2026, 11, 25, 12, 11, tzinfo=UTC),
        polls=2,
        labels={},
    )
    traced = to_kafka_message(
        event, "spark-poller", TraceContext(traceparent=VALID, tracestate="a=b")
    )
    assert traced.headers["ce_traceparent"] == VALID.encode()
    assert traced.headers["ce_tracestate"] == b"a=b"
    plain = to_kafka_message(event, "spark-poller")
    assert not {"ce_traceparent", "ce_tracestate"} & set(plain.headers)
    assert traced.value == plain.value  # the value is the same with or without a trace
