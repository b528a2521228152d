"""Group commit: the small writes of many threads made durable by one commit.

A write made here returns only once a commit covering it is done, exactly as with a transaction
of its own. But the writes waiting when a commit begins share it: a burst of endings or submits
takes one turn at SQLite's single writer and one fsync, not one each, and on PostgreSQL one round
trip to commit. No thread waits on a timer: whoever finds no commit under way makes one for all.

A write is a function of the connection, run on whichever thread commits, and run again alone if
the shared transaction fails for a reason that is not the database's (a conflict of one write must
not fail its neighbours). So a write must do nothing but execute statements on that connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

from poller.db import database_unavailable

T = TypeVar("T")

MAX_BATCH = 256


class _Write(Generic[T]):
    __slots__ = ("error", "finished", "result", "write")

    def __init__(self, write: Callable[[Connection], T]) -> None:
        self.write = write
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs writes of many threads in shared transactions, each caller waiting for its own."""

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: list[_Write[object]] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def run(self, write: Callable[[Connection], T]) -> T:
        """Execute ``write`` in a transaction and return its result once that committed; raises
        what the transaction raised."""
        mine: _Write[T] = _Write(write)
        with self._queue_lock:
            self._queue.append(mine)  # type: ignore[arg-type]
        while not mine.finished:
            with self._commit_lock:
                if mine.finished:  # the commit we waited for covered it
                    break
                with self._queue_lock:
                    batch = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                self._commit(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _commit(self, batch: list[_Write[object]]) -> None:
        try:
            pending = batch
            while pending:
                pending = self._commit_once(pending)
        finally:  # interrupted (a signal mid-commit): the writes' callers must not wait forever
            for write in batch:
                if not write.finished:
                    write.error = RuntimeError("the transaction was interrupted")
                    write.finished = True

    def _commit_once(self, batch: list[_Write[object]]) -> list[_Write[object]]:
        """Commit ``batch`` in one transaction; returns the writes still to commit when one
        write's fault (a conflict) failed it: that write is then settled alone."""
        results: list[object] = []
        try:
            with self.engine.begin() as conn:
                for write in batch:
                    results.append(write.write(conn))
        except Exception as exc:
            if len(batch) == 1 or database_unavailable(exc):
                for write in batch:
                    write.error = exc
                    write.finished = True
                return []
            if len(results) == len(batch):  # failed at commit: whose fault is unknown
                for write in batch:
                    self._commit_once([write])
                return []
            failed = len(results)
            self._commit_once([batch[failed]])
            return batch[:failed] + batch[failed + 1 :]
        for write, result in zip(batch, results, strict=True):
            write.result = result
            write.finished = True
        return []
