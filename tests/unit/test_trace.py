"""W3C trace context from a submit's headers to the completion event's CloudEvents headers."""

from __future__ import annotations

import pytest

from poller.schemas import TraceContext, trace_context

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
