"""Outbox attempts: a report about a send already given up never settles or fails its successor.

The publisher here is a fake that only records each send's callback, so the test decides which
report arrives when (the real broker's reports are covered by the integration tests); the store
is a real SQLite database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from poller.db import create_db_engine
from poller.devstack import wait_for
from poller.metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from poller.outbox import Outbox
from poller.schemas import CompletionEvent, DriverState, Phase, TraceContext
from poller.store import RequestStore


class RecordingPublisher:
    """Takes every send and keeps its delivery callback for the test to call."""

    def __init__(self) -> None:
        self.sends: list[Callable[[str | None], None]] = []

    def send(
        self, _event: CompletionEvent, on_done: Callable[[str | None], None], _trace: Any = None
    ) -> object:
        self.sends.append(on_done)
        return object()

    def replace_if_stuck(self, _producer: object) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RequestStore]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    store = RequestStore(engine)
    store.create_schema()
    yield store
    engine.dispose()


def publishing(store: RequestStore, request_id: str) -> Any:
    store.insert(
        request_id,
        "default",
        {},
        trace=TraceContext(traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
    )
    store.mark_submitted(request_id, "driver-20261126000000-0001", DriverState.RUNNING)
    store.complete(request_id, DriverState.FINISHED, None)
    record = store.get(request_id)
    assert record is not None
    assert record.phase == Phase.PUBLISHING
    return record


def test_a_late_failure_of_a_stuck_send_leaves_its_successor_alone(store: RequestStore) -> None:
    publisher = RecordingPublisher()
    removed: list[str] = []
    outbox = Outbox(store, publisher, removed.extend, stuck_after_s=0.2)  # type: ignore[arg-type]
    outbox.start()
    try:
        record = publishing(store, "r-1")
        published = EVENTS_PUBLISHED.labels("FINISHED")._value.get()
        failures = {c: PUBLISH_FAILURES.labels(c)._value.get() for c in ("no_report", "delivery")}

        outbox.offer(record)  # attempt 1: no report comes in time
        wait_for(lambda: outbox._in_flight.get("r-1") is None, 5, "attempt 1 given up")
        outbox.offer(record)  # the next poll sends again: attempt 2
        assert len(publisher.sends) == 2
        publisher.sends[0]("purged with its stuck producer")  # attempt 1's late failure
        publisher.sends[1](None)  # attempt 2 delivered; reports are handled in order
        wait_for(lambda: removed == ["r-1"], 5, "the request settled")

        done = store.get("r-1")
        assert done is not None
        assert done.phase == Phase.DONE
        assert EVENTS_PUBLISHED.labels("FINISHED")._value.get() == published + 1
        assert PUBLISH_FAILURES.labels("no_report")._value.get() == failures["no_report"] + 1
        assert PUBLISH_FAILURES.labels("delivery")._value.get() == failures["delivery"]
    finally:
        outbox.stop()
