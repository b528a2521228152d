"""Schema migrations on real SQLite files and a real PostgreSQL server.

Most tests run on both backends (the ``database_url`` fixture); the advisory lock is PostgreSQL's
alone, so the PostgreSQL half of the concurrency test proves it by watching the lock wait.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from poller import migrate
from poller.db import create_db_engine
from poller.devstack import free_port, wait_for
from poller.errors import SchemaMismatch
from poller.models import Base
from poller.schemas import DriverState
from poller.shards import JOBS_TABLE
from poller.store import RequestStore

PREVIOUS = "0001"
TRACE_COLUMNS = {"traceparent", "tracestate"}
DRIVER = "driver-20261125101500-0003"
UPGRADE_FIX = "spark-poller db upgrade"


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def _differences(engine: sa.Engine) -> list[Any]:
    """What alembic's autogenerate would change to make the database match the models."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": migrate.include_name,
                "include_object": migrate.include_object,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(context, Base.metadata))


def _add_scheduler_table(engine: sa.Engine) -> None:
    """APScheduler's own table, with one job in it, the way the service's scheduler makes it."""
    jobs = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE).jobs_t
    jobs.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(sa.insert(jobs).values(id="some-job", next_run_time=1.0, job_state=b"x"))


def _scheduler_jobs(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text(f"SELECT id FROM {JOBS_TABLE}")))


def _previous_release(engine: sa.Engine) -> None:
    """A database as the release before migrations left it: revision 0001's tables (the same
    statements its ``create_all`` ran), without ``alembic_version``."""
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), PREVIOUS)
        conn.execute(sa.text("DROP TABLE alembic_version"))


def _columns(engine: sa.Engine) -> set[str]:
    return {str(column["name"]) for column in sa.inspect(engine).get_columns("poller_requests")}


def _index_names(engine: sa.Engine) -> set[str]:
    return {str(ix["name"]) for ix in sa.inspect(engine).get_indexes("poller_requests")}


def _insert_old_rows(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    """Rows written through whatever columns the table has now (as the old release would)."""
    table = sa.Table("poller_requests", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)


def _old_row(request_id: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request_id,
        "cluster": "default",
        "submission_id": None,
        "phase": "done",
        "state": "FINISHED",
        "spark_state": "FINISHED",
        "message": None,
        "labels": {"team": "ingest"},
        "polls": 3,
        "unknown_polls": 0,
        "submitted_at": datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "completed_at": datetime(2026, 11, 25, 12, 5, tzinfo=UTC),
        "event_id": None,
        "published_at": datetime(2026, 11, 25, 12, 5, 1, tzinfo=UTC),
    }
    return {**row, **changes}


def _in_flight_row(request_id: str) -> dict[str, Any]:
    return _old_row(
        request_id,
        submission_id=DRIVER,
        phase="polling",
        state="RUNNING",
        completed_at=None,
        published_at=None,
    )


def _rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM poller_requests ORDER BY request_id"))
        return [tuple(row) for row in result]


def _snapshot(engine: sa.Engine) -> tuple[object, ...]:
    """What a user could see of the database: its tables, our columns and indexes, our rows."""
    inspector = sa.inspect(engine)
    return (
        sorted(inspector.get_table_names()),
        sorted(_columns(engine)),
        sorted(_index_names(engine)),
        _rows(engine),
    )


# -- a new database, and the models -------------------------------------------------------------


def test_an_empty_database_gets_the_schema_of_the_models(engine: sa.Engine) -> None:
    _add_scheduler_table(engine)  # not ours: autogenerate must not offer to drop it
    assert migrate.current(engine) is None
    assert migrate.upgrade(engine) == migrate.head()
    assert migrate.current(engine) == migrate.head()
    migrate.check_current(engine)  # at head: nothing to refuse
    assert _differences(engine) == []
    # The same through env.py, as `alembic check` would run it: its filters are the ones in use.
    with engine.connect() as conn:
        command.check(migrate.alembic_config(conn))
    assert _scheduler_jobs(engine) == ["some-job"]


def test_revision_0001_is_the_previous_release(engine: sa.Engine) -> None:
    """The previous release's models differ from these by the trace and run-detail columns,
    the lease and layout tables, and the history indexes (which replace two of its own) alone."""
    _previous_release(engine)
    found = sorted(
        (diff[0], diff[3].name if diff[0] == "add_column" else diff[1].name)
        for diff in _differences(engine)
    )
    assert found == sorted(
        [("add_column", name) for name in TRACE_COLUMNS | migrate.DETAIL_COLUMNS]
        + [("add_table", "poller_layout"), ("add_table", "poller_leases")]
        + [
            ("add_index", "ix_poller_requests_listing"),
            ("add_index", "ix_poller_requests_phase_ended"),
            ("add_index", "ix_poller_requests_state_listing"),
            ("remove_index", "ix_poller_requests_phase"),
            ("remove_index", "ix_poller_requests_state"),
            ("remove_index", "ix_poller_requests_submitted_at"),
        ]
    )


def test_upgrading_twice_changes_nothing(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    migrate.upgrade(engine)
    _insert_old_rows(engine, [_old_row("kept")])
    before = _snapshot(engine)
    with caplog.at_level(logging.INFO):
        assert migrate.upgrade(engine) == migrate.head()
    assert "Running upgrade" not in caplog.text
    assert _snapshot(engine) == before


# -- a database of the previous release ---------------------------------------------------------


def test_a_previous_release_database_keeps_its_rows_and_gains_the_trace_columns(
    engine: sa.Engine,
) -> None:
    _previous_release(engine)
    _add_scheduler_table(engine)
    _insert_old_rows(
        engine,
        [
            _old_row("finished"),
            _in_flight_row("polling"),
        ],
    )
    rows = _rows(engine)
    assert not TRACE_COLUMNS & _columns(engine)
    assert migrate.current(engine) is None  # not versioned

    assert migrate.upgrade(engine) == migrate.head()

    assert migrate.current(engine) == migrate.head()
    assert _columns(engine) >= TRACE_COLUMNS
    # Every old value unchanged, the new columns empty.
    old = len(rows[0])
    assert [row[:old] for row in _rows(engine)] == rows
    assert {value for row in _rows(engine) for value in row[old:]} == {None}
    assert _differences(engine) == []
    record = RequestStore(engine).get("polling")
    assert record is not None
    assert record.submission_id == DRIVER
    assert record.labels == {"team": "ingest"}
    assert _scheduler_jobs(engine) == ["some-job"]


def test_an_older_database_without_the_driver_index_upgrades_and_names_shared_drivers(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Made before one-driver-one-request: two requests may track one driver. The upgrade goes
    through, says which, and the index comes at the upgrade after one of them is done."""
    _previous_release(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX uq_poller_requests_tracked_driver"))
    tracking = {"submission_id": DRIVER, "phase": "polling", "state": "RUNNING"}
    _insert_old_rows(engine, [_old_row("old-1", **tracking), _old_row("old-2", **tracking)])

    with caplog.at_level(logging.ERROR):
        assert migrate.upgrade(engine) == migrate.head()
    assert "old-1, old-2" in caplog.text
    assert DRIVER in caplog.text
    assert migrate.current(engine) == migrate.head()
    assert _columns(engine) >= TRACE_COLUMNS
    assert "uq_poller_requests_tracked_driver" not in _index_names(engine)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        migrate.check_current(engine)  # at head: starts, and says what is still missing
    assert "uq_poller_requests_tracked_driver is missing" in caplog.text
    assert UPGRADE_FIX in caplog.text

    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE poller_requests SET phase = 'done' WHERE request_id = 'old-2'")
        )
    migrate.upgrade(engine)
    assert "uq_poller_requests_tracked_driver" in _index_names(engine)
    assert _differences(engine) == []


def test_downgrade_to_the_previous_release_and_back(engine: sa.Engine) -> None:
    _add_scheduler_table(engine)
    migrate.upgrade(engine)
    _insert_old_rows(
        engine, [_old_row("traced", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")]
    )
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), PREVIOUS)
    assert migrate.current(engine) == PREVIOUS
    assert not TRACE_COLUMNS & _columns(engine)
    assert [row[0] for row in _rows(engine)] == ["traced"]
    with pytest.raises(SchemaMismatch, match=f"at revision {PREVIOUS}, this version needs"):
        migrate.check_current(engine)

    assert migrate.upgrade(engine) == migrate.head()
    assert _differences(engine) == []
    assert [row[0] for row in _rows(engine)] == ["traced"]
    assert _scheduler_jobs(engine) == ["some-job"]


def test_a_database_of_the_release_before_run_details_upgrades_and_downgrades_with_its_rows(
    engine: sa.Engine,
) -> None:
    """Revision 0004 (what the release before this one ran): its rows keep every value, the new
    columns come empty, and a request in flight there is read, and ended, here."""
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0004")
    _insert_old_rows(
        engine,
        [
            _old_row("done-before"),
            _in_flight_row("polling-before"),
        ],
    )
    rows = _rows(engine)
    assert migrate.upgrade(engine) == migrate.head()
    old = len(rows[0])
    assert [row[:old] for row in _rows(engine)] == rows
    assert _columns(engine) >= migrate.DETAIL_COLUMNS
    assert _differences(engine) == []
    store = RequestStore(engine)
    before = store.get("done-before")
    assert before is not None
    assert (before.started_at, before.worker, before.failure) == (None, None, None)
    ended = store.complete("polling-before", DriverState.FINISHED, None)
    assert ended is not None
    assert ended.state == DriverState.FINISHED
    assert ended.worker is None

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0004")
    assert not migrate.DETAIL_COLUMNS & _columns(engine)
    assert [row[0] for row in _rows(engine)] == ["done-before", "polling-before"]
    assert migrate.upgrade(engine) == migrate.head()
    assert _differences(engine) == []


def test_tables_of_these_models_without_a_version_are_stamped_at_head(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """``create_all`` of this version's models, as a build before migrations would have run."""
    Base.metadata.create_all(engine)
    _insert_old_rows(engine, [_old_row("kept")])
    before = _snapshot(engine)
    with pytest.raises(SchemaMismatch, match=r"does not record it.*spark-poller db upgrade"):
        migrate.check_current(engine)
    with caplog.at_level(logging.INFO):
        assert migrate.upgrade(engine) == migrate.head()
    assert "Running upgrade" not in caplog.text  # stamped, nothing re-applied
    assert migrate.current(engine) == migrate.head()
    assert _snapshot(engine)[1:] == before[1:]  # alembic_version is the only new table


# -- refusing a database at another revision ----------------------------------------------------


def test_a_database_behind_is_refused_naming_both_revisions_and_the_fix(
    engine: sa.Engine,
) -> None:
    with pytest.raises(SchemaMismatch) as empty:
        migrate.check_current(engine)
    assert "empty" in empty.value.message
    assert UPGRADE_FIX in empty.value.message

    _previous_release(engine)
    before = _snapshot(engine)
    with pytest.raises(SchemaMismatch) as old:
        migrate.check_current(engine)
    message = old.value.message
    assert f"at revision {PREVIOUS}" in message
    assert f"needs {migrate.head()}" in message
    assert UPGRADE_FIX in message
    assert (old.value.current, old.value.head) == (None, migrate.head())
    assert _snapshot(engine) == before


def test_a_database_ahead_of_this_code_is_refused(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    before = _snapshot(engine)
    for step in (migrate.check_current, migrate.upgrade):
        with pytest.raises(SchemaMismatch) as ahead:
            step(engine)
        assert "at revision 0099, which this version does not know" in ahead.value.message
        assert f"needs {migrate.head()}" in ahead.value.message
    assert migrate.current(engine) == "0099"
    assert _snapshot(engine) == before


def test_without_auto_migrate_the_service_refuses_an_old_database(
    database_url: str, engine: sa.Engine
) -> None:
    """`spark-poller serve` with POLLER_AUTO_MIGRATE=false: one line naming the fix, non-zero exit,
    and the database as it was (not even APScheduler's table made)."""
    _previous_release(engine)
    _insert_old_rows(engine, [_old_row("kept")])
    before = _snapshot(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_DATABASE_URL=database_url,
        POLLER_AUTO_MIGRATE="false",
        POLLER_PORT=str(free_port()),
        POLLER_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # never reached
    )
    done = subprocess.run(
        [sys.executable, "-m", "poller", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout
    assert done.returncode != 0, output  # uvicorn exits 3 when the start fails
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert UPGRADE_FIX in line
    assert f"at revision {PREVIOUS}" in line
    assert f"needs {migrate.head()}" in line
    assert database_url not in output
    assert _snapshot(engine) == before


# -- logs ---------------------------------------------------------------------------------------


def test_migrations_log_no_url_and_leave_logging_alone(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = sa.make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password="never-in-a-log")  # the test server trusts loopback
    secret_url = url.render_as_string(hide_password=False)
    engine = create_db_engine(secret_url)
    _previous_release(engine)
    ours = logging.getLogger("poller.store")
    handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.DEBUG):
        migrate.upgrade(engine)
        migrate.current(engine)
        migrate.check_current(engine)
    engine.dispose()
    assert "Running upgrade 0001 -> 0002" in caplog.text  # alembic's own lines were captured
    assert secret_url not in caplog.text
    assert str(url.database) not in caplog.text
    assert "never-in-a-log" not in caplog.text
    # No fileConfig: the service's loggers and handlers are as they were.
    assert not ours.disabled
    assert logging.getLogger().handlers == handlers


# -- two processes upgrading at once ------------------------------------------------------------


def _waits_on_our_lock(observer: sa.Engine) -> Callable[[], bool]:
    """True while a session of this database waits for the migration's advisory lock."""
    key = migrate.MIGRATION_LOCK_KEY
    query = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = :high AND objid = :low AND objsubid = 1"
    )

    def waiting() -> bool:
        with observer.connect() as conn:
            return bool(conn.scalar(query, {"high": key >> 32, "low": key & 0xFFFFFFFF}))

    return waiting


def _on_lock_attempt(engine: sa.Engine, attempted: threading.Event) -> None:
    """Sets ``attempted`` as a connection of ``engine`` starts BEGIN IMMEDIATE: SQLite traces a
    statement as it starts running, before it waits for the write lock."""

    def seen(statement: str) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            attempted.set()

    @sa.event.listens_for(engine, "connect")
    def _trace(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.set_trace_callback(seen)


def _hold_first_table(
    engine: sa.Engine, held: threading.Event, other_waits: Callable[[], bool]
) -> None:
    """The first upgrade to create our table stops there until the other one waits for it."""

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _hold(*args: Any) -> None:
        statement = str(args[2])
        if "CREATE TABLE poller_requests" in statement and not held.is_set():
            held.set()
            wait_for(other_waits, 30, "the other upgrade to wait for the migration lock")


def test_two_upgrades_at_once_apply_each_revision_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The first to take the lock runs the revisions while the other provably waits for it (on
    PostgreSQL its advisory lock shows as not granted; on SQLite it has begun BEGIN IMMEDIATE);
    the other then finds the database at head."""
    engines = [create_db_engine(database_url, timeout_s=30) for _ in range(2)]
    observer = create_db_engine(database_url)
    held = threading.Event()
    if database_url.startswith("sqlite"):
        # The file exists, in WAL mode, as any service start leaves it; two first opens of a new
        # file could leave one in rollback-journal mode and the other waiting for it to finish.
        with observer.connect():
            pass
        attempted = [threading.Event(), threading.Event()]
        for engine, mine, theirs in zip(engines, attempted, reversed(attempted), strict=True):
            _on_lock_attempt(engine, mine)
            _hold_first_table(engine, held, theirs.is_set)
    else:
        for engine in engines:
            _hold_first_table(engine, held, _waits_on_our_lock(observer))

    start = threading.Barrier(2)
    results: list[str | BaseException] = ["", ""]

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = migrate.upgrade(engines[i])
        except BaseException as exc:
            results[i] = exc

    with caplog.at_level(logging.INFO):
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert results == [migrate.head(), migrate.head()]
    assert held.is_set()
    applied = [r.getMessage().split(",")[0] for r in caplog.records]
    applied = [message for message in applied if message.startswith("Running upgrade")]
    assert applied == [
        "Running upgrade  -> 0001",
        "Running upgrade 0001 -> 0002",
        "Running upgrade 0002 -> 0003",
        "Running upgrade 0003 -> 0004",
        "Running upgrade 0004 -> 0005",
        "Running upgrade 0005 -> 0006",
    ]
    with engines[0].connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
    assert _differences(engines[0]) == []
    for engine in [*engines, observer]:
        engine.dispose()
