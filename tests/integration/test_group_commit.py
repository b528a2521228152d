"""Group commit on real SQLite and PostgreSQL: shared commits, each caller's own outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from poller.db import create_db_engine
from poller.group_commit import GroupCommit

ROWS = sa.Table(
    "rows", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url, pool_size=40)
    ROWS.metadata.create_all(engine)
    yield engine
    engine.dispose()


def commits_of(engine: Engine) -> list[int]:
    counted = [0]

    @sa.event.listens_for(engine, "commit")
    def _count(_conn: Connection) -> None:
        counted[0] += 1

    return counted


def insert(i: int, value: str = "x") -> sa.Insert:
    return sa.insert(ROWS).values(id=i, v=value)


def stored(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return {row.id: row.v for row in conn.execute(sa.select(ROWS))}


def test_concurrent_writes_share_commits_and_each_gets_its_result(engine: Engine) -> None:
    group = GroupCommit(engine)
    commits = commits_of(engine)

    def write(i: int) -> int:
        def insert_and_count(conn: Connection) -> int:
            conn.execute(insert(i))
            return i + conn.execute(sa.select(sa.func.count()).where(ROWS.c.id == i)).scalar_one()

        return group.run(insert_and_count)

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(write, range(2000)))

    assert results == [i + 1 for i in range(2000)]
    assert sorted(stored(engine)) == list(range(2000))
    assert commits[0] < 2000  # shared: fewer commits than writes


def test_a_conflicting_write_fails_alone(engine: Engine) -> None:
    group = GroupCommit(engine)
    group.run(lambda conn: conn.execute(insert(7, "first")))
    start = threading.Barrier(20)
    outcomes: dict[int, str] = {}

    def write(i: int) -> None:
        start.wait()
        row = 7 if i == 0 else 100 + i
        try:
            group.run(lambda conn: conn.execute(insert(row, "new")))
            outcomes[i] = "ok"
        except IntegrityError:
            outcomes[i] = "conflict"

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(write, range(20)))

    assert outcomes[0] == "conflict"
    assert all(outcomes[i] == "ok" for i in range(1, 20))
    rows = stored(engine)
    assert rows[7] == "first"
    assert sorted(rows) == [7, *range(101, 120)]


def test_a_failing_write_rolls_back_only_itself(engine: Engine) -> None:
    group = GroupCommit(engine)

    def broken(conn: Connection) -> None:
        conn.execute(insert(1))
        raise ValueError("not a database error")

    start = threading.Barrier(2)

    def run_broken() -> str:
        start.wait()
        try:
            group.run(broken)
        except ValueError:
            return "raised"
        return "returned"

    def run_fine() -> str:
        start.wait()
        group.run(lambda conn: conn.execute(insert(2)))
        return "ok"

    with ThreadPoolExecutor(max_workers=2) as pool:
        broken_outcome, fine = pool.submit(run_broken), pool.submit(run_fine)
        assert broken_outcome.result() == "raised"
        assert fine.result() == "ok"
    assert sorted(stored(engine)) == [2]


def test_a_database_that_cannot_be_written_fails_the_batch_once(database_url: str) -> None:
    """Locked out, every waiting caller hears at once: no write is tried again alone (which
    would make each caller wait out the timeout once per write ahead of it)."""
    engine = create_db_engine(database_url, pool_size=20, timeout_s=1.0)
    ROWS.metadata.create_all(engine)
    other = create_db_engine(database_url)
    group = GroupCommit(engine)
    tries = [0]
    start = threading.Barrier(10)

    def write(i: int) -> str:
        def attempt(conn: Connection) -> None:
            tries[0] += 1
            conn.execute(insert(i))

        start.wait()
        try:
            group.run(attempt)
        except OperationalError:
            return "unavailable"
        return "written"

    try:
        with other.connect() as holder:
            if engine.dialect.name == "sqlite":
                holder.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                holder.execute(sa.text("LOCK TABLE rows IN ACCESS EXCLUSIVE MODE"))
            with ThreadPoolExecutor(max_workers=10) as pool:
                outcomes = list(pool.map(write, range(10)))
            holder.rollback()
        assert outcomes == ["unavailable"] * 10
        assert tries[0] <= 10  # at most once each: none tried again alone
        group.run(lambda conn: conn.execute(insert(5)))  # and it works again afterwards
        assert sorted(stored(engine)) == [5]
    finally:
        other.dispose()
        engine.dispose()


def test_an_interrupted_commit_releases_its_waiters(engine: Engine) -> None:
    group = GroupCommit(engine)

    def interrupted(_conn: Connection) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        group.run(interrupted)
    group.run(lambda conn: conn.execute(insert(9)))
    assert sorted(stored(engine)) == [9]
