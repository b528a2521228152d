"""The purge's turn: bounded batches, and nothing at all with a retention of zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from poller.retention import Retention
from poller.store import RequestStore

NOW = datetime(2026, 12, 6, tzinfo=UTC)


class Store:
    """Deletes from a pile of ``left`` old requests, ``batch`` at a time."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.calls: list[tuple[datetime, int]] = []

    def purge_done(self, before: datetime, batch: int) -> int:
        self.calls.append((before, batch))
        deleted = min(batch, self.left)
        self.left -= deleted
        return deleted


def test_a_turn_deletes_batch_after_batch_until_none_is_left() -> None:
    store = Store(2500)
    assert Retention(cast(RequestStore, store), 30, batch=1000).purge(NOW) == 2500
    assert store.calls == [(NOW - timedelta(days=30), 1000)] * 3


def test_a_retention_of_zero_deletes_nothing() -> None:
    store = Store(2500)
    assert Retention(cast(RequestStore, store), 0).purge(NOW) == 0
    assert store.calls == []
