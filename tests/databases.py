"""Databases made for one test: a fresh PostgreSQL database, optionally in a foreign time zone."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from poller.devstack import Postgres


def new_pg_database(server: Postgres, timezone: str | None = None) -> str:
    """Create an empty database on ``server`` (sessions default to ``timezone``); return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        if timezone is not None:
            conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET timezone TO '{timezone}'"))
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def frozen(server: Postgres) -> Iterator[None]:
    """SIGSTOP the whole server: its sockets stay open and its kernel ACKs, but nothing answers.

    Every backend is a session leader of its own (PostgreSQL calls setsid() in each child), so the
    postmaster's process group alone would leave open connections answering: the postmaster is
    stopped first (it forks no more), then each of its children.
    """
    assert server.daemon is not None
    postmaster = server.daemon.pid
    os.killpg(postmaster, signal.SIGSTOP)
    stopped = _children(postmaster)
    try:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.killpg(postmaster, signal.SIGCONT)
