"""The one SQLAlchemy engine shared by our tables and APScheduler's job store.

Every wait on the database is bounded by ``timeout_s``: taking a pooled connection, opening one,
SQLite's lock waits, and on PostgreSQL each statement on the server (``statement_timeout``) and
each round trip on the client. The last needs a watchdog: a server that stopped answering (a
SIGSTOPped or frozen host) keeps its sockets open and its kernel still ACKs our packets, so no TCP
setting ends the wait. The watchdog shuts down the socket of a connection whose round trip overran;
psycopg then raises, SQLAlchemy discards the connection, and the store answers StoreUnavailable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0
# The client's deadline leaves the server room to end an overlong statement itself, cleanly.
CLIENT_GRACE_S = 1.0
# libpq's floor: a connect_timeout under 2 s is taken as 2 s.
MIN_CONNECT_TIMEOUT_S = 2
SQLITE_SYNC_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
# The caller sizes the pool for every thread that may use it at once; a few spare for the rest.
POOL_OVERFLOW = 5


def database_unavailable(exc: BaseException) -> bool:
    """The database is down, locked out or out of connections (not one statement's fault)."""
    if isinstance(exc, PoolTimeout | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def create_db_engine(
    url: str,
    pool_size: int = 10,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sqlite_synchronous: str = "FULL",
    application_name: str | None = None,
    idle_in_transaction_s: float | None = None,
) -> Engine:
    """Build the engine, every wait bounded by ``timeout_s``; times are UTC on every connection.

    SQLite gets WAL, a busy timeout so API and poll threads can share it, and ``synchronous=FULL``
    so a commit (a 202 already answered) survives an OS crash; ``sqlite_synchronous`` exists for
    the benchmark that measures what that costs. On PostgreSQL every session carries
    ``application_name`` (``pg_stat_activity`` tells the replicas' sessions apart), and the
    server ends one left idle inside a transaction for ``idle_in_transaction_s``.
    """
    if sqlite_synchronous not in SQLITE_SYNC_LEVELS:
        raise ValueError(f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNC_LEVELS)}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        writer = type(
            "SQLiteConnection",
            (OneWriterConnection,),
            {"write_lock": threading.Lock(), "write_wait_s": timeout_s},
        )
        engine = create_engine(
            url,
            connect_args={"timeout": timeout_s, "check_same_thread": False, "factory": writer},
            pool_size=pool_size,
            max_overflow=POOL_OVERFLOW,
            pool_timeout=timeout_s,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine

    engine = create_engine(
        url,
        connect_args={
            "connect_timeout": max(MIN_CONNECT_TIMEOUT_S, math.ceil(timeout_s)),
            # A peer that vanished without a word (a failed-over host, lost NAT state) is noticed
            # by the kernel within seconds, even on a connection that only waits.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": int((timeout_s + CLIENT_GRACE_S) * 1000),
            **({} if application_name is None else {"application_name": application_name[:63]}),
        },
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW,
        pool_recycle=1800,
        pool_timeout=timeout_s,
    )
    if parsed.get_driver_name() == "psycopg":
        deadline_s = timeout_s + CLIENT_GRACE_S

        @event.listens_for(engine, "do_connect")
        def _guarded_connect(
            _dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
        ) -> GuardedConnection:
            conn = GuardedConnection.connect(*cargs, cursor_factory=GuardedCursor, **cparams)
            conn.deadline_s = deadline_s
            return conn

        @event.listens_for(engine, "checkin")
        def _restore_deadline(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            if isinstance(dbapi_conn, GuardedConnection):
                dbapi_conn.deadline_s = deadline_s

    if parsed.get_backend_name() == "postgresql":

        @event.listens_for(engine, "connect")
        def _pin_session(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # UTC whatever the server's or the database's default: stored times, and the events
            # built from them, must not depend on a server setting.
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SET TIME ZONE 'UTC'")
                cursor.execute(f"SET statement_timeout = {math.ceil(timeout_s * 1000)}")
                if idle_in_transaction_s is not None:
                    cursor.execute(
                        "SET idle_in_transaction_session_timeout = "
                        f"{math.ceil(idle_in_transaction_s * 1000)}"
                    )
            finally:
                cursor.close()
            dbapi_conn.commit()

    return engine


class _Watchdog:
    """Shuts down the socket of a connection whose round trip outlived its deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int, float]] = {}  # token -> deadline, fd, limit
        self._tokens = itertools.count()
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, fd: int, limit_s: float) -> Iterator[None]:
        deadline = time.monotonic() + limit_s
        token = next(self._tokens)
        with self._cond:
            self._armed[token] = (deadline, fd, limit_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-deadline", daemon=True)
                self._thread.start()
            if deadline < self._wakes_at:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(token, None)  # gone if the watchdog fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd, limit_s) in list(self._armed.items()):
                    if deadline <= now:
                        # Still armed, so its call is still in progress and the fd still open.
                        self._armed.pop(token, None)
                        logger.warning(
                            "database gave no answer within %.3gs; dropping the connection",
                            limit_s,
                        )
                        _shut_down(fd)
                self._wakes_at = min((d for d, _, _ in self._armed.values()), default=math.inf)
                self._cond.wait(None if self._wakes_at == math.inf else self._wakes_at - now)


def _shut_down(fd: int) -> None:
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


_watchdog = _Watchdog()


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class OneWriterConnection(sqlite3.Connection):
    """A SQLite connection that takes this process's write lock for each write transaction.

    SQLite lets one writer in at a time and makes the others retry in its busy handler, which
    sleeps up to 100 ms between tries and lets newcomers overtake: under a steady stream of
    writes one of them can wait out the whole busy timeout. Writers of this process queue on a
    lock instead, taken where sqlite3 begins the transaction (the first write statement) and
    released at its end. Other processes on the file still meet the busy timeout."""

    write_lock: threading.Lock
    write_wait_s: float
    _holding = False

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or _WriterCursor)

    def begin_write(self, sql: str) -> None:
        if self._holding or self.in_transaction or not sql.lstrip()[:7].upper().startswith(_WRITES):
            return
        if not self.write_lock.acquire(timeout=self.write_wait_s):
            raise sqlite3.OperationalError("database is locked (this process's writers queue)")
        self._holding = True

    def end_write(self) -> None:
        if self._holding and not self.in_transaction:
            self._holding = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.end_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                self.write_lock.release()


class _WriterCursor(sqlite3.Cursor):
    connection: OneWriterConnection

    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        self.connection.begin_write(sql)
        try:
            return super().execute(sql, parameters)
        finally:
            self.connection.end_write()  # released at once if no transaction began

    def executemany(self, sql: str, parameters: Any, /) -> Self:
        self.connection.begin_write(sql)
        try:
            return super().executemany(sql, parameters)
        finally:
            self.connection.end_write()


class GuardedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every round trip to the server has a deadline."""

    deadline_s: float | None = DEFAULT_TIMEOUT_S + CLIENT_GRACE_S

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        limit_s = self.deadline_s
        try:
            fd = self.pgconn.socket
        except psycopg.OperationalError:  # closed: the call itself says so, without waiting
            limit_s = None
        if limit_s is None:
            yield
            return
        with _watchdog.guard(fd, limit_s):
            yield

    def commit(self) -> None:
        with self.deadline():
            super().commit()

    def rollback(self) -> None:
        with self.deadline():
            super().rollback()


class GuardedCursor(psycopg.Cursor[Any]):
    """The cursor of a :class:`GuardedConnection` (SQLAlchemy's statements and pings)."""

    def _deadline(self) -> contextlib.AbstractContextManager[None]:
        conn = self.connection
        if isinstance(conn, GuardedConnection):
            return conn.deadline()
        return contextlib.nullcontext()

    def execute(self, *args: Any, **kwargs: Any) -> Self:
        with self._deadline():
            return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        with self._deadline():
            super().executemany(*args, **kwargs)
