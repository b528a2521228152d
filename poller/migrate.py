"""Schema migrations of our tables (alembic): the one place that runs them.

The revisions live in ``poller/migrations/versions``; alembic's configuration is built here, so no
``alembic.ini`` is needed and no database URL is ever written down or logged. APScheduler's job
table shares the database but is its own: migrations and autogenerate see only our tables.

A database made before migrations existed (``create_all`` of an earlier release) has our table but
no ``alembic_version``: its columns tell which revision it is at, it is stamped so, then upgraded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.schema import SchemaItem

from poller.db import CLIENT_GRACE_S, GuardedConnection
from poller.errors import SchemaMismatch, StoreUnavailable
from poller.models import TRACKING, Base

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
TABLE = "poller_requests"
LEASES_TABLE = "poller_leases"  # since 0003
LAYOUT_TABLE = "poller_layout"  # since 0004
LISTING_INDEX = "ix_poller_requests_listing"  # since 0006
OUR_TABLES = frozenset(Base.metadata.tables)
UPGRADE_FIX = "run `spark-poller db upgrade`"
# Tables made by create_all before migrations: the revision each column set stands for.
FIRST_COLUMNS = frozenset(
    {
        "request_id",
        "cluster",
        "submission_id",
        "phase",
        "state",
        "spark_state",
        "message",
        "labels",
        "polls",
        "unknown_polls",
        "submitted_at",
        "last_polled_at",
        "cancel_requested_at",
        "completed_at",
        "event_id",
        "published_at",
    }
)
TRACE_COLUMNS = frozenset({"traceparent", "tracestate"})
DETAIL_COLUMNS = frozenset(  # since 0005
    {
        "started_at",
        "worker_id",
        "worker_host",
        "detection_bound_s",
        "spark_app_name",
        "spark_app_id",
        "spark_app_ui_url",
        "failure",
        "spark_tag",
        "search_until",
    }
)
UNVERSIONED = (("0002", FIRST_COLUMNS | TRACE_COLUMNS), ("0001", FIRST_COLUMNS))
# Transaction-level advisory lock of PostgreSQL upgrades (another key than the scheduler lease's).
MIGRATION_LOCK_KEY = 0x73706B70_6D696772  # "spkpmigr"
# An upgrade may wait for another process's, and build an index on a large table: longer than
# the bound on ordinary statements, still bounded.
MIGRATION_TIMEOUT_S = 600.0


def include_name(name: str | None, type_: NameFilterType, _parents: NameFilterParentNames) -> bool:
    """Reflect only our tables: APScheduler's job table (and anything else there) is not ours."""
    return type_ != "table" or name in OUR_TABLES


def include_object(
    _obj: SchemaItem,
    name: str | None,
    type_: NameFilterType,
    _reflected: bool,
    _compare_to: SchemaItem | None,
) -> bool:
    """Compare and migrate only our tables."""
    return type_ != "table" or name in OUR_TABLES


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code; migrations run on ``connection`` (env.py takes it)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision this version of the code needs."""
    revision = _scripts().get_current_head()
    if revision is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return revision


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """A database that cannot be reached is StoreUnavailable, as in the store (no URL in it)."""
    try:
        yield
    except PoolTimeout as exc:
        raise StoreUnavailable("database unavailable: no connection free in time") from exc
    except OperationalError as exc:
        raise StoreUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc


def current(engine: Engine) -> str | None:
    """The revision the database is at; None when it is empty or not versioned yet."""
    with _database_errors(), engine.connect() as conn:
        return _versioned(conn)


def _versioned(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _unversioned(conn: Connection) -> str | None:
    """The revision whose schema a database without ``alembic_version`` has; None if it has no
    table of ours. Raises SchemaMismatch for a table no release made."""
    inspector = inspect(conn)
    if not inspector.has_table(TABLE):
        return None
    columns = {str(column["name"]) for column in inspector.get_columns(TABLE)}
    if columns == FIRST_COLUMNS | TRACE_COLUMNS | DETAIL_COLUMNS and all(
        inspector.has_table(table) for table in (LEASES_TABLE, LAYOUT_TABLE)
    ):
        indexes = {str(index["name"]) for index in inspector.get_indexes(TABLE)}
        return "0006" if LISTING_INDEX in indexes else "0005"
    if columns == FIRST_COLUMNS | TRACE_COLUMNS and inspector.has_table(LEASES_TABLE):
        return "0004" if inspector.has_table(LAYOUT_TABLE) else "0003"
    for revision, expected in UNVERSIONED:
        if columns == expected:
            return revision
    missing = ", ".join(sorted(FIRST_COLUMNS - columns)) or "none"
    extra = ", ".join(sorted(columns - FIRST_COLUMNS - TRACE_COLUMNS - DETAIL_COLUMNS)) or "none"
    raise SchemaMismatch(
        f"table {TABLE} has no schema revision and matches no release (missing columns: "
        f"{missing}; unknown columns: {extra}): migrate it by hand, then stamp it",
        None,
        head(),
    )


def _ahead(revision: str, needed: str) -> SchemaMismatch:
    return SchemaMismatch(
        f"the database schema is at revision {revision}, which this version does not know "
        f"(it needs {needed}; a newer release migrated the database): run that release, or "
        "downgrade the database with it first",
        revision,
        needed,
    )


def _known(revision: str) -> bool:
    return any(script.revision == revision for script in _scripts().walk_revisions())


def check_current(engine: Engine) -> None:
    """Refuse a database that is not at this version's revision, without changing it.

    Raises SchemaMismatch naming both revisions and the fix: behind (or not versioned yet) asks
    for ``spark-poller db upgrade``; ahead (a revision this code does not know) asks for the newer
    release. Raises StoreUnavailable if the database cannot be reached.
    """
    needed = head()
    with _database_errors(), engine.connect() as conn:
        revision = _versioned(conn)
        if revision == needed:
            _warn_missing_indexes(conn)
            return
        if revision is not None and not _known(revision):
            raise _ahead(revision, needed)
        if revision is not None:
            raise SchemaMismatch(
                f"the database schema is at revision {revision}, this version needs {needed}: "
                f"{UPGRADE_FIX} (or start with POLLER_AUTO_MIGRATE=true)",
                revision,
                needed,
            )
        found = _unversioned(conn)
        if found is None:
            where = "empty (no tables of ours)"
        elif found == needed:
            where = f"at revision {found} but does not record it (made before migrations)"
        else:
            where = f"at revision {found} (tables of an earlier release, not versioned yet)"
        raise SchemaMismatch(
            f"the database schema is {where}, this version needs {needed}: {UPGRADE_FIX} "
            "(or start with POLLER_AUTO_MIGRATE=true)",
            None,
            needed,
        )


def upgrade(engine: Engine) -> str:
    """Bring our tables to this version's revision; return it.

    One transaction under a lock (PostgreSQL: a transaction-level advisory lock; SQLite: the
    write lock, ``BEGIN IMMEDIATE``), so processes starting together apply each revision once:
    the later ones find the work done. Raises SchemaMismatch for a database ahead of this code,
    StoreUnavailable if the database cannot be reached.
    """
    needed = head()
    with _database_errors(), engine.connect() as conn:
        _lock(conn)
        revision = _versioned(conn)
        if revision is None:
            found = _unversioned(conn)
            if found is not None:
                logger.info(
                    "tables of an earlier release, not versioned yet: at revision %s", found
                )
                command.stamp(alembic_config(conn), found)
                revision = found
        elif not _known(revision):
            raise _ahead(revision, needed)
        if revision != needed:
            logger.info(
                "database schema at revision %s; upgrading to %s", revision or "none", needed
            )
            command.upgrade(alembic_config(conn), "head")
        _create_missing_indexes(conn)
        conn.commit()
    return needed


def _lock(conn: Connection) -> None:
    """Begin the upgrade's transaction, holding the lock that serialises upgrades."""
    if conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL: this one holds the write lock from the start.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        if isinstance(raw, GuardedConnection):
            raw.deadline_s = MIGRATION_TIMEOUT_S + CLIENT_GRACE_S  # restored when checked in
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(MIGRATION_TIMEOUT_S * 1000)}")
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


def _missing_indexes(conn: Connection) -> list[str]:
    present = {str(index["name"]) for index in inspect(conn).get_indexes(TABLE)}
    return sorted(
        str(ix.name) for ix in Base.metadata.tables[TABLE].indexes if ix.name not in present
    )


def _create_missing_indexes(conn: Connection) -> None:
    """Create what an earlier release's database still lacks: its requests may share a driver,
    which the unique index refuses; then say which, and carry on (it is created at a later
    upgrade, once all but one of them are done)."""
    missing = set(_missing_indexes(conn))
    for index in sorted(Base.metadata.tables[TABLE].indexes, key=lambda ix: str(ix.name)):
        if index.name not in missing:
            continue
        try:
            with conn.begin_nested():
                index.create(conn)
            logger.info("created index %s", index.name)
        except IntegrityError:
            _report_shared_drivers(conn)


def _warn_missing_indexes(conn: Connection) -> None:
    for name in _missing_indexes(conn):
        logger.warning(
            "index %s is missing (requests of an earlier release may share a driver): "
            "%s once all but one of them are done",
            name,
            UPGRADE_FIX,
        )


def _report_shared_drivers(conn: Connection) -> None:
    """An earlier release let several requests track one driver; say which."""
    table = Base.metadata.tables[TABLE]
    tracking = text(TRACKING)
    shared = (
        select(table.c.cluster, table.c.submission_id)
        .where(tracking)
        .group_by(table.c.cluster, table.c.submission_id)
        .having(func.count() > 1)
    )
    for cluster, submission_id in conn.execute(shared).all():
        ids = conn.scalars(
            select(table.c.request_id).where(
                tracking, table.c.cluster == cluster, table.c.submission_id == submission_id
            )
        ).all()
        logger.error(
            "requests %s all track driver %s on %s: each will publish its own event; "
            "one driver per request is enforced once all but one are done "
            "(DELETE the others, without kill)",
            ", ".join(sorted(ids)),
            submission_id,
            cluster,
            extra={"submission_id": submission_id, "cluster": cluster},
        )
