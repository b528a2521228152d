"""How long finished requests stay: ``POLLER_RETENTION_DAYS``, then they are deleted, a bounded
batch at a time, so the table (and every listing of it) stays as large as the retention, not
the service's whole life. The leader of shard 0 does it; a second process at it would only find
less to delete."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from poller.metrics import REQUESTS_PURGED
from poller.store import RequestStore

logger = logging.getLogger(__name__)

BATCH = 1000
# Per turn, at most: the watchdog that runs it has other beats to keep.
TURN_S = 0.5


class Retention:
    def __init__(self, store: RequestStore, days: int, batch: int = BATCH) -> None:
        self.store = store
        self.days = days
        self.batch = batch

    def purge(self, now: datetime) -> int:
        """One turn: delete what ended more than ``days`` before ``now``, batch by batch, for
        up to TURN_S; returns how many went (the rest go at the next turn)."""
        if self.days <= 0:
            return 0
        before = now - timedelta(days=self.days)
        stop_at = time.monotonic() + TURN_S
        purged = 0
        while True:
            deleted = self.store.purge_done(before, self.batch)
            purged += deleted
            REQUESTS_PURGED.inc(deleted)
            if deleted < self.batch or time.monotonic() >= stop_at:
                break
        if purged:
            logger.info(
                "deleted %d request(s) finished before %s (POLLER_RETENTION_DAYS=%d)",
                purged,
                before.isoformat(timespec="seconds"),
                self.days,
            )
        return purged
