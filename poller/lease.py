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
import queue
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psycopg
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from poller.errors import StoreUnavailable
from poller.shards import LEASES_NAMESPACE, MEMBERS_NAMESPACE

logger = logging.getLogger(__name__)

CHECK_S = 2.0  # how often the holder confirms its advisory lock
KEEPER_STEP_S = 0.5  # how long the keeper waits on the socket between looks at its stop
ROUND_TRIP_S = 4.0  # the engine's default bound on one statement, with its client's grace
# A confirmation is trusted for the idle limit less this (the check's own round trip).
VALIDITY_MARGIN_S = 1.5


class Lease(Protocol):
    """Who may schedule one store."""

    description: str
    # Called as the lease is taken, with the session that holds it (PostgreSQL; None for the
    # others): a failure there gives the lease up again.
    on_taken: Callable[[Connection | None], None] | None
    # Called on threads of the lease's own: the lease went (PostgreSQL: the session ended); and
    # what other processes NOTIFYed on the lease's channel while held.
    on_lost: Callable[[], None] | None
    on_notify: Callable[[list[str]], None] | None

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this process holds it now, False if
        another does. Raises StoreUnavailable when it cannot tell."""

    def holding(self) -> bool:
        """Whether this process still holds it (False once lost, or when the check does not
        come back in time: stop scheduling at once). Never waits on the database."""

    def valid(self) -> bool:
        """Held, and confirmed recently enough that no other process can have taken it yet:
        asked before every decision only the leader may make (a frozen process that wakes
        up finds it False before it acts)."""

    def release(self) -> None:
        """Give it up (also fine when not held)."""


class FileLease:
    """An exclusive non-blocking ``flock`` on ``path``; held through one open descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file lock {path}"
        self.on_taken: Callable[[Connection | None], None] | None = None
        self.on_lost: Callable[[], None] | None = None  # never lost while the process lives
        self.on_notify: Callable[[list[str]], None] | None = None  # nobody to notify on SQLite
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
        _taken(self)
        return True

    def holding(self) -> bool:
        return self._fd is not None

    def valid(self) -> bool:
        return self._fd is not None  # the kernel drops it only with the process

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None


class LocalLease:
    """An in-memory SQLite store exists in this process only: nobody else can schedule it."""

    description = "in-process store"

    def __init__(self) -> None:
        self._held = False
        self.on_taken: Callable[[Connection | None], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_notify: Callable[[list[str]], None] | None = None

    def try_acquire(self) -> bool:
        if not self._held:
            self._held = True
            _taken(self)
        return True

    def holding(self) -> bool:
        return self._held

    def valid(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False


class AdvisoryLease:
    """A PostgreSQL session advisory lock on a connection of its own (never returned to a pool).

    The session runs in autocommit, so it is never idle inside a transaction (where
    ``idle_session_timeout`` would not apply: a holder frozen between two statements would keep
    the lock for good). While the lock is held, a keeper thread owns that connection: it confirms
    the lock every ``check_s``, and in between waits on the connection's socket, so that a
    session the server ends (``pg_terminate_backend``, the idle limit, a restart) is noticed at
    once, not at the next check. The same session LISTENs on ``channel``; other processes'
    NOTIFY payloads reach ``on_notify`` on a thread of their own, so handling them never delays
    a check."""

    def __init__(
        self,
        engine: Engine,
        shard: int = 0,
        ttl_s: float | None = None,
        check_s: float = CHECK_S,
        channel: str | None = None,
        round_trip_s: float = ROUND_TRIP_S,
    ) -> None:
        """``round_trip_s``: the longest one statement on the lease's session can take (the
        engine's bound on every round trip)."""
        self.engine = engine
        self.key = (LEASES_NAMESPACE, shard)
        self.ttl_s = ttl_s
        self.check_s = check_s
        self.channel = channel
        self.round_trip_s = round_trip_s
        self.description = f"PostgreSQL advisory lock ({self.key[0]}, {self.key[1]})"
        self.on_taken: Callable[[Connection | None], None] | None = None
        self.on_notify: Callable[[list[str]], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self._conn: Connection | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._confirmed_at = float("-inf")
        self._notified: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._warned_no_ttl = False

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.holding()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        try:
            self._limit_idle(conn)
            asked_at = time.monotonic()
            got = conn.scalar(
                text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": self.key[0], "b": self.key[1]}
            )
            if got:
                if self.channel is not None:
                    self._listen(conn, self.channel)
                if self.on_taken is not None:
                    # On this session: it holds the lock at that moment, whatever comes after.
                    self.on_taken(conn)
        except Exception as exc:
            _discard(conn)  # the lock, if taken, goes with the session
            if isinstance(exc, SQLAlchemyError):
                raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        self._confirmed_at = asked_at
        self._lost.clear()
        self._stop = stop = threading.Event()
        notified: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._notified = notified
        self._keeper = threading.Thread(
            target=self._keep, args=(conn, stop, notified), name="lease-keeper", daemon=True
        )
        self._keeper.start()
        threading.Thread(
            target=self._deliver, args=(notified,), name="lease-notifies", daemon=True
        ).start()
        return True

    def _limit_idle(self, conn: Connection) -> None:
        """The server ends this session (and so the lease) when it sits idle for ``ttl_s``."""
        if self.ttl_s is None:
            return
        ms = f"{int(self.ttl_s * 1000)}ms"
        for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
            try:
                conn.execute(
                    text("SELECT set_config(:name, :ms, false)"), {"name": setting, "ms": ms}
                )
            except SQLAlchemyError as exc:  # PostgreSQL before 14: no idle_session_timeout
                if not self._warned_no_ttl:
                    self._warned_no_ttl = True
                    logger.warning(
                        "the scheduler lease has no time limit on this PostgreSQL (%s): a frozen "
                        "leader keeps it until its connection closes",
                        type(exc).__name__,
                    )

    def _listen(self, conn: Connection, channel: str) -> None:
        raw = conn.connection.driver_connection
        if isinstance(raw, psycopg.Connection):
            raw.add_notify_handler(self._notified_of)
            conn.exec_driver_sql(f'LISTEN "{channel}"')

    def _notified_of(self, notify: psycopg.Notify) -> None:
        self._notified.put(notify.payload)  # on the keeper's thread, inside its statement

    def holding(self) -> bool:
        return self._conn is not None and not self._lost.is_set()

    def valid(self) -> bool:
        if not self.holding():
            return False
        if self.ttl_s is None:  # the server keeps the lock for as long as the session lives
            return True
        # Idle for ttl_s, the session ends: the lease is ours while the last confirmation
        # (timed from before it was asked) is younger than that, less a margin.
        return time.monotonic() - self._confirmed_at < self.ttl_s - VALIDITY_MARGIN_S

    def _keep(
        self, conn: Connection, stop: threading.Event, notified: queue.SimpleQueue[str | None]
    ) -> None:
        """Own the lease's session until a stop (then unlock and close it) or its loss."""
        lost = True
        try:
            lost = not self._watch(conn, stop)
        except Exception:
            logger.exception("scheduler lease lost: its keeper failed")
        finally:
            notified.put(None)  # ends the delivering thread
            if lost and not stop.is_set():
                self._lost.set()
                self._conn = None
            elif not self._lost.is_set():
                with contextlib.suppress(SQLAlchemyError):
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:a, :b)"),
                        {"a": self.key[0], "b": self.key[1]},
                    )
            _discard(conn)
        if lost and not stop.is_set() and self.on_lost is not None:
            self.on_lost()

    def _watch(self, conn: Connection, stop: threading.Event) -> bool:
        """Confirm the lock until ``stop`` (True) or until it is gone (False)."""
        raw = conn.connection.driver_connection
        fd = raw.pgconn.socket if isinstance(raw, psycopg.Connection) else None
        next_check = time.monotonic() + self.check_s
        while not stop.is_set():
            wait_s = max(0.0, min(KEEPER_STEP_S, next_check - time.monotonic()))
            ready = _readable(fd, wait_s)
            if stop.is_set():
                return True
            if not ready and time.monotonic() < next_check:
                continue
            asked_at = time.monotonic()
            if not self._check(conn):
                return False
            self._confirmed_at = asked_at
            next_check = asked_at + self.check_s
        return True

    def _check(self, conn: Connection) -> bool:
        try:
            held = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND pid = pg_backend_pid() AND classid::bigint = :a AND objid::bigint = :b"
                    " AND objsubid = 2"
                ),
                {"a": self.key[0] & 0xFFFFFFFF, "b": self.key[1] & 0xFFFFFFFF},
            )
        except SQLAlchemyError as exc:
            logger.error("scheduler lease lost: its connection failed (%s)", type(exc).__name__)
            return False
        if not held:
            logger.error("scheduler lease lost: the advisory lock is gone")
            return False
        return True

    def _deliver(self, notified: queue.SimpleQueue[str | None]) -> None:
        """Hand NOTIFY payloads to ``on_notify``, all those at hand at once, until the keeper
        ends."""
        while True:
            first = notified.get()
            if first is None:
                return
            payloads = [first]
            more: str | None = ""
            with contextlib.suppress(queue.Empty):
                while (more := notified.get_nowait()) is not None:
                    payloads.append(more)
            if more is None:
                notified.put(None)  # seen with others: stop after delivering them
            if self.on_notify is not None:
                try:
                    self.on_notify(payloads)
                except Exception:
                    logger.exception("handling %d notification(s) failed", len(payloads))

    def release(self) -> None:
        """Give the lease up: the keeper unlocks and closes its session (a keeper still inside
        a statement does so when that returns; the session dies with the process anyway)."""
        if self._conn is None:
            return
        self._conn = None
        self._stop.set()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(2 * self.round_trip_s + KEEPER_STEP_S)


def _taken(lease: FileLease | LocalLease) -> None:
    """Run ``on_taken`` of a lease without a session of its own; a failure gives it up."""
    if lease.on_taken is None:
        return
    try:
        lease.on_taken(None)
    except BaseException:
        lease.release()
        raise


def _discard(conn: Connection) -> None:
    """Close a lease's session for good (never back to the pool: it may hold a lock)."""
    try:
        conn.invalidate()
        conn.close()
    except SQLAlchemyError:
        pass


def _readable(fd: int | None, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the server to send something: a notification, or the
    message that ends the session (then the socket is readable too)."""
    if fd is None or fd < 0:
        time.sleep(timeout_s)
        return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
    except (OSError, ValueError):  # closed under us: the next check says how
        return True
    return bool(ready)


class Membership:
    """Which replicas are up, for sharing the shards fairly: each holds a shared advisory lock
    (``MEMBERS_NAMESPACE``, 0) on a session of its own, which dies with the process, and with a
    frozen one after ``ttl_s`` (the session's idle limit; :meth:`keep`, called every beat,
    keeps it alive). Who holds it is read from ``pg_locks`` by the caller."""

    def __init__(self, engine: Engine, ttl_s: float | None = None) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._conn: Connection | None = None
        self.pid: int | None = None  # the server process of our session, while in

    def keep(self) -> None:
        """Be counted (joining first if this process is not in yet, or its session ended)."""
        try:
            if self._conn is None:
                self._conn = self._join()
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            self.leave()
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def _join(self) -> Connection:
        # Autocommit, as the leases' sessions: never idle inside a transaction, where the idle
        # limit would not end it.
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if self.ttl_s is not None:
                with contextlib.suppress(SQLAlchemyError):  # PostgreSQL before 14
                    conn.execute(
                        text("SELECT set_config('idle_session_timeout', :ms, false)"),
                        {"ms": f"{int(self.ttl_s * 1000)}ms"},
                    )
            conn.execute(text("SELECT pg_advisory_lock_shared(:a, 0)"), {"a": MEMBERS_NAMESPACE})
            self.pid = conn.scalar(text("SELECT pg_backend_pid()"))
        except SQLAlchemyError:
            _discard(conn)
            raise
        return conn

    def leave(self) -> None:
        self.pid = None
        conn, self._conn = self._conn, None
        if conn is not None:
            _discard(conn)


def lease_for(
    url: str,
    engine: Engine,
    ttl_s: float | None = None,
    channel: str | None = None,
    shard: int = 0,
) -> Lease:
    """The lease that guards ``shard`` of the store at ``url`` (PostgreSQL: held through
    ``engine``, lost after ``ttl_s`` without a check, listening on ``channel``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            return LocalLease()
        return FileLease(Path(f"{os.path.abspath(database)}.lease"))
    return AdvisoryLease(engine, shard, ttl_s=ttl_s, channel=channel)
