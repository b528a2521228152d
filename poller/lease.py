"""The scheduler lease: one process at a time schedules a job store, recovers it and polls.

APScheduler 3 forbids two schedulers on one job store, and two recoveries would resolve each
other's in-flight work. So a process schedules only while it holds the store's lease, and the lease
dies with its holder, however it dies:

- PostgreSQL: a session advisory lock held by a dedicated connection; the server drops it when that
  connection or the process goes, and when the holder stops checking it for ``ttl_s`` (the
  session's ``idle_session_timeout``, PostgreSQL 14 and later): a frozen or SIGSTOPped holder
  whose sockets stay open loses it too, and a standby takes over.
- SQLite: an exclusive ``flock`` on a file beside the database file; the kernel drops it when the
  process goes.

A lease is named by ``(store key, shard)`` so that a later partitioning of the store into shards can
take one lease per shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import zlib
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from poller.errors import StoreUnavailable

logger = logging.getLogger(__name__)

# First half of every advisory lock key we take: the other half is the shard.
ADVISORY_NAMESPACE = zlib.crc32(b"spark-poller scheduler lease") - 2**31


class Lease(Protocol):
    """Who may schedule one store."""

    description: str

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this process holds it now, False if
        another does. Raises StoreUnavailable when it cannot tell."""

    def holding(self) -> bool:
        """Whether this process still holds it (False once lost, or when the check does not
        come back in time: stop scheduling at once). Bounded like every database call."""

    def release(self) -> None:
        """Give it up (also fine when not held)."""


class FileLease:
    """An exclusive non-blocking ``flock`` on ``path``; held through one open descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file lock {path}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"lease file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailable(f"lease file {self.path}: {exc.strerror}") from exc
        self._fd = fd
        # Who holds it, for an operator; the lock, not this text, is what counts.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def holding(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None


class LocalLease:
    """An in-memory SQLite store exists in this process only: nobody else can schedule it."""

    description = "in-process store"

    def __init__(self) -> None:
        self._held = False

    def try_acquire(self) -> bool:
        self._held = True
        return True

    def holding(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False


class AdvisoryLease:
    """A PostgreSQL session advisory lock on a connection of its own (never returned to a pool)."""

    def __init__(self, engine: Engine, shard: int = 0, ttl_s: float | None = None) -> None:
        self.engine = engine
        self.key = (ADVISORY_NAMESPACE, shard)
        self.ttl_s = ttl_s
        self.description = f"PostgreSQL advisory lock ({self.key[0]}, {self.key[1]})"
        self._conn: Connection | None = None
        self._warned_no_ttl = False

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.holding()
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        try:
            self._limit_idle(conn)
            got = conn.scalar(
                text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": self.key[0], "b": self.key[1]}
            )
            conn.commit()
        except SQLAlchemyError as exc:
            conn.invalidate()
            conn.close()
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _limit_idle(self, conn: Connection) -> None:
        """The server ends this session (and so the lease) when it sits idle for ``ttl_s``."""
        if self.ttl_s is None:
            return
        try:
            with conn.begin_nested():
                conn.execute(
                    text("SELECT set_config('idle_session_timeout', :ms, false)"),
                    {"ms": f"{int(self.ttl_s * 1000)}ms"},
                )
        except SQLAlchemyError as exc:  # PostgreSQL before 14: no such setting
            if not self._warned_no_ttl:
                self._warned_no_ttl = True
                logger.warning(
                    "the scheduler lease has no time limit on this PostgreSQL (%s): a frozen "
                    "leader keeps it until its connection closes",
                    type(exc).__name__,
                )

    def holding(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            held = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid::bigint = :a AND objid::bigint = :b"
                    " AND objsubid = 2"
                ),
                {"a": self.key[0] & 0xFFFFFFFF, "b": self.key[1] & 0xFFFFFFFF},
            )
            conn.commit()
        except SQLAlchemyError as exc:
            logger.error("scheduler lease lost: its connection failed (%s)", type(exc).__name__)
            self._drop()
            return False
        if not held:
            logger.error("scheduler lease lost: the advisory lock is gone")
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:
                pass

    def release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.execute(
                text("SELECT pg_advisory_unlock(:a, :b)"), {"a": self.key[0], "b": self.key[1]}
            )
            conn.commit()
        except SQLAlchemyError:
            pass  # closing the session drops it anyway
        self._drop()


def lease_for(url: str, engine: Engine, ttl_s: float | None = None) -> Lease:
    """The lease that guards the store at ``url`` (PostgreSQL: held through ``engine``, lost
    after ``ttl_s`` without a check)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            return LocalLease()
        return FileLease(Path(f"{os.path.abspath(database)}.lease"))
    return AdvisoryLease(engine, ttl_s=ttl_s)
