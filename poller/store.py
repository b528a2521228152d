"""Our request records: queries and transactions. Returns schemas, never ORM rows."""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from poller import migrate
from poller.db import database_unavailable
from poller.errors import ConfigMismatch, DriverTaken, RequestConflict, StoreUnavailable
from poller.group_commit import GroupCommit
from poller.models import LAYOUT_ID, LayoutRow, LeaseRow, RequestRow, UTCDateTime
from poller.schemas import (
    DriverState,
    DriverStatus,
    EndDetails,
    Failure,
    Fence,
    JobFilter,
    JobRecord,
    Phase,
    SparkApp,
    TraceContext,
    Worker,
    event_id_for,
)
from poller.shards import OUR_LOCKS, OUR_LOCKS_PARAMS

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ACTIVE_PHASES = (Phase.POLLING.value, Phase.CANCELLING.value, Phase.PUBLISHING.value)
ASKING_SPARK = (Phase.POLLING.value, Phase.CANCELLING.value)
# A conflicting row that vanishes before we can name it (it just ended) earns another try.
CONFLICT_ATTEMPTS = 3
MAX_WHY_CHARS = 2000
# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound parameters.
IN_CHUNK = 500
# Writes below must not make the ORM read rows first: that read would sit outside the
# transaction on SQLite (pysqlite begins one only at the first write).
NO_PRE_READ = {"synchronize_session": False}

_REQUESTS = cast(Table, RequestRow.__table__)
# The poll path's statements, built once: Core, no ORM session per poll.
_GET = select(_REQUESTS).where(_REQUESTS.c.request_id == bindparam("rid"))
_ADD_POLLS = (
    update(_REQUESTS)
    # A request whose ending is fixed took its counts into that write: its event never changes.
    # (No IN list: its expanding parameter cannot be executed for many rows at once.)
    .where(
        _REQUESTS.c.request_id == bindparam("rid"),
        or_(
            _REQUESTS.c.phase == Phase.POLLING.value,
            _REQUESTS.c.phase == Phase.CANCELLING.value,
        ),
    )
    .values(polls=_REQUESTS.c.polls + bindparam("n"), last_polled_at=bindparam("at"))
)
_COLUMNS = _REQUESTS.c
# Columns an ending may fill in (None leaves them as they are).
_DETAILS = (
    "worker_id",
    "worker_host",
    "detection_bound_s",
    "spark_app_id",
    "spark_app_ui_url",
    "failure",
)
# An ending, fixed once: with the polls counted since the last write (and the answer that showed
# it, when ``seen``); the stored row comes back in the same statement where the database can.
_FIX = (
    update(_REQUESTS)
    .where(
        _COLUMNS.request_id == bindparam("rid"),
        _COLUMNS.phase.in_(bindparam("phases", expanding=True)),
    )
    .values(
        phase=Phase.PUBLISHING.value,
        state=bindparam("state"),
        completed_at=bindparam("at"),
        event_id=bindparam("eid"),
        message=func.coalesce(bindparam("message", type_=_COLUMNS.message.type), _COLUMNS.message),
        polls=_COLUMNS.polls + bindparam("polls"),
        last_polled_at=func.coalesce(
            bindparam("last", type_=_COLUMNS.last_polled_at.type), _COLUMNS.last_polled_at
        ),
        spark_state=case(
            (bindparam("seen", type_=Boolean), bindparam("spark", type_=_COLUMNS.spark_state.type)),
            else_=_COLUMNS.spark_state,
        ),
        unknown_polls=case((bindparam("seen", type_=Boolean), 0), else_=_COLUMNS.unknown_polls),
        search_until=None,  # ended: nothing is looked for any more
        # What is known about the run: kept where this ending does not know better.
        **{
            name: func.coalesce(bindparam(name, type_=_COLUMNS[name].type), _COLUMNS[name])
            for name in _DETAILS
        },
    )
)
_LEASES = cast(Table, LeaseRow.__table__)
_LAYOUT = cast(Table, LayoutRow.__table__)
# A leader's ending lands only while its lease was not taken by anyone since (see LeaseRow).
_FENCED_FIX = _FIX.where(
    select(_LEASES.c.epoch).where(_LEASES.c.shard == bindparam("shard")).scalar_subquery()
    == bindparam("epoch")
)
_FIX_RETURNING = _FIX.returning(*_COLUMNS)
_FENCED_FIX_RETURNING = _FENCED_FIX.returning(*_COLUMNS)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _translate_db_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map a lost or refused database connection to StoreUnavailable at this adapter's edge."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PoolTimeout as exc:
            raise StoreUnavailable("database unavailable: no connection free in time") from exc
        except DBAPIError as exc:
            if database_unavailable(exc):
                raise StoreUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
            raise

    return wrapper


def _record(row: Any) -> JobRecord:
    """A record from an ORM row or a Core row of the requests table."""
    published = row.published_at is not None
    # Our own columns, typed by their column types: built without validating them again.
    return JobRecord.model_construct(
        request_id=row.request_id,
        cluster=row.cluster,
        submission_id=row.submission_id,
        state=DriverState(row.state),
        phase=Phase(row.phase),
        spark_state=row.spark_state,
        message=row.message,
        labels=dict(row.labels or {}),
        polls=row.polls,
        unknown_polls=row.unknown_polls,
        cancel_requested_at=row.cancel_requested_at,
        submitted_at=row.submitted_at,
        last_polled_at=row.last_polled_at,
        completed_at=row.completed_at,
        event_id=row.event_id if published else None,
        traceparent=row.traceparent,
        tracestate=row.tracestate,
        spark_tag=row.spark_tag,
        spark_app_name=row.spark_app_name,
        search_until=row.search_until,
        started_at=row.started_at,
        worker=None if row.worker_id is None else Worker(id=row.worker_id, host=row.worker_host),
        spark_app=(
            None
            if row.spark_app_id is None
            else SparkApp(id=row.spark_app_id, ui_url=row.spark_app_ui_url)
        ),
        failure=None if row.failure is None else Failure.model_validate(row.failure),
        detection_delay_bound_s=row.detection_bound_s,
    )


def started(record: JobRecord, status: DriverStatus) -> bool:
    """Whether ``status`` is the first sight of the driver running on a worker."""
    return (
        record.started_at is None
        and status.state == DriverState.RUNNING
        and status.worker_id is not None
    )


def _detail_params(seen: DriverStatus | None, details: EndDetails | None) -> dict[str, Any]:
    """The ``_DETAILS`` columns an ending writes (None keeps what is stored)."""
    details = details or EndDetails()
    failure, app = details.failure, details.spark_app
    return {
        "worker_id": None if seen is None else seen.worker_id,
        "worker_host": None if seen is None else seen.worker_host,
        "detection_bound_s": details.detection_bound_s,
        "spark_app_id": None if app is None else app.id,
        "spark_app_ui_url": None if app is None else app.ui_url,
        "failure": None if failure is None else failure.model_dump(mode="json"),
    }


def _matching(query: Select[Any], listing: JobFilter) -> Select[Any]:
    if listing.state is not None:
        query = query.where(_COLUMNS.state == listing.state.value)
    if listing.since is not None:
        query = query.where(_COLUMNS.submitted_at >= listing.since)
    if listing.until is not None:
        query = query.where(_COLUMNS.submitted_at < listing.until)
    return query


def _searching() -> Any:
    """Requests whose create may have landed, while their driver is looked for."""
    return (RequestRow.phase == Phase.SUBMITTING.value) & RequestRow.search_until.is_not(None)


def _tracking() -> Any:
    """Rows that still track their driver (what the unique index covers)."""
    return RequestRow.submission_id.is_not(None) & (RequestRow.phase != Phase.DONE.value)


def _tracker(
    session: Session, cluster: str, submission_id: str, other_than: str
) -> RequestRow | None:
    query = select(RequestRow).where(
        _tracking(),
        RequestRow.cluster == cluster,
        RequestRow.submission_id == submission_id,
        RequestRow.request_id != other_than,
    )
    return session.scalars(query.limit(1)).first()


def _taken(tracker: RequestRow) -> str:
    return (
        f"driver {tracker.submission_id!r} on cluster {tracker.cluster!r} is already tracked by "
        f"request {tracker.request_id!r} ({tracker.state}, {tracker.phase})"
    )


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class RequestStore:
    """CRUD for request records, with the compare-and-set steps the poll job relies on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # The writes of the poll path, submits and the outbox: many threads, one commit at a time.
        self._group = GroupCommit(engine)
        # Polls that changed nothing but the counters: counted here, written in batches
        # (flush_poll_counts), folded into the request's next write, and shown by every read.
        self._counts_lock = threading.Lock()
        self._counts: dict[str, tuple[int, datetime]] = {}

    def _with_counts(self, record: JobRecord) -> JobRecord:
        """The record with the polls counted here and not written yet, while it is still polled.
        Once its ending is fixed the stored record is the event's (whoever fixed it): as is."""
        pending = self._counts.get(record.request_id)  # one read of a dict: needs no lock
        if pending is None or record.phase.value not in ASKING_SPARK:
            return record
        return record.model_copy(
            update={"polls": record.polls + pending[0], "last_polled_at": pending[1]}
        )

    def _take_count(self, request_id: str) -> tuple[int, datetime] | None:
        with self._counts_lock:
            return self._counts.pop(request_id, None)

    def _restore_count(self, request_id: str, taken: tuple[int, datetime] | None) -> None:
        if taken is None:
            return
        with self._counts_lock:
            n, at = self._counts.get(request_id, (0, taken[1]))
            self._counts[request_id] = (n + taken[0], max(at, taken[1]))

    @_translate_db_errors
    def flush_poll_counts(self) -> int:
        """Write the counted polls in one transaction; returns how many requests had some.

        A crash loses at most the polls counted since the last flush: counters, not state."""
        with self._counts_lock:
            batch, self._counts = self._counts, {}
        if not batch:
            return 0
        rows = [{"rid": rid, "n": n, "at": at} for rid, (n, at) in batch.items()]
        try:
            # With the other writes to requests: on PostgreSQL two transactions of this process
            # that lock rows in different orders would deadlock.
            self._group.run(lambda conn: conn.execute(_ADD_POLLS, rows))
        except BaseException:
            for rid, taken in batch.items():
                self._restore_count(rid, taken)
            raise
        return len(rows)

    @_translate_db_errors
    def create_schema(self, auto_migrate: bool = True) -> None:
        """Bring our tables to this version's schema (``auto_migrate``), or else refuse a
        database at any other: raises SchemaMismatch naming both revisions and the fix."""
        if auto_migrate:
            migrate.upgrade(self.engine)
        else:
            migrate.check_current(self.engine)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @_translate_db_errors
    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    @_translate_db_errors
    def insert(
        self,
        request_id: str,
        cluster: str,
        labels: dict[str, str],
        submission_id: str | None = None,
        trace: TraceContext | None = None,
        adopted: tuple[DriverState, str | None] | None = None,
        also: Callable[[Connection], None] | None = None,
        app_name: str | None = None,
    ) -> JobRecord:
        """Record a new request in phase SUBMITTING, or, with ``adopted`` (the driver's state
        and Spark's word for it, as just read), in phase POLLING; ``also`` writes more in the
        same transaction (the poll job).

        Raises RequestConflict if ``request_id`` is taken, or DriverTaken (naming the request)
        if ``submission_id`` is a driver that a request not yet done tracks on ``cluster``; the
        database decides, so two concurrent adoptions of one driver cannot both win.
        """
        for _ in range(CONFLICT_ATTEMPTS):
            state, spark_state = adopted or (DriverState.SUBMITTING, None)
            row = RequestRow(
                request_id=request_id,
                cluster=cluster,
                submission_id=submission_id,
                phase=(Phase.SUBMITTING if adopted is None else Phase.POLLING).value,
                state=state.value,
                spark_state=spark_state,
                labels=labels,
                polls=0,
                unknown_polls=0,
                submitted_at=utcnow(),
                traceparent=None if trace is None else trace.traceparent,
                tracestate=None if trace is None else trace.tracestate,
                spark_app_name=None if app_name is None else app_name[:256],
                # A create's tag (an adoption makes none): how its driver is found again.
                spark_tag=None if app_name is None else str(uuid.uuid4()),
            )
            values = {column.key: getattr(row, column.key) for column in _REQUESTS.columns}

            def write(conn: Connection, values: dict[str, Any] = values) -> None:
                conn.execute(insert(_REQUESTS), values)
                if also is not None:
                    also(conn)

            try:
                self._group.run(write)
                return _record(row)
            except IntegrityError as exc:
                with self._sessions() as session:
                    # Both taken (a client retrying its adoption): the request_id is the answer.
                    if session.get(RequestRow, request_id) is not None:
                        raise RequestConflict(f"request_id {request_id!r} already exists") from exc
                    if submission_id is not None:
                        tracker = _tracker(session, cluster, submission_id, request_id)
                        if tracker is not None:
                            raise DriverTaken(_taken(tracker), tracker.request_id) from exc
        raise RequestConflict(f"request {request_id!r} kept conflicting with changing requests")

    @_translate_db_errors
    def delete_submitting(self, request_id: str) -> None:
        """Forget a request whose submission Spark refused (nothing else references it).

        A request that recovery has resolved meanwhile is left alone: it has an event to publish.
        """
        with self._tx() as session:
            session.execute(
                delete(RequestRow)
                .where(
                    RequestRow.request_id == request_id,
                    RequestRow.phase == Phase.SUBMITTING.value,
                )
                .execution_options(**NO_PRE_READ)
            )

    @_translate_db_errors
    def mark_submitted(
        self,
        request_id: str,
        submission_id: str,
        state: DriverState,
        spark_state: str | None = None,
        also: Callable[[Connection], None] | None = None,
        withdraw: bool = True,
        message: str | None = None,
    ) -> JobRecord | None:
        """Spark accepted (or we adopted) the driver: from here on the poll job owns the request.
        ``spark_state`` is Spark's own word for ``state``, when an answer gave one; ``also``
        writes more in the same transaction (the poll job), only if the request moved.

        One conditional UPDATE, so it cannot overwrite a request that recovery resolved a moment
        earlier: None if the request is no longer SUBMITTING.

        Raises DriverTaken if another request began tracking this driver first: someone adopted
        the driver Spark just made for us before we recorded it. Our request is then withdrawn
        (deleted, as if never made) so the driver keeps exactly one request and one event; the
        error names the request that tracks it. Without ``withdraw`` (a search found the driver:
        nobody waits on a call for the error) the request is left as it is.
        """
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                with self._tx() as session:
                    moved = session.execute(
                        update(RequestRow)
                        .where(
                            RequestRow.request_id == request_id,
                            RequestRow.phase == Phase.SUBMITTING.value,
                        )
                        .values(
                            submission_id=submission_id,
                            phase=Phase.POLLING.value,
                            state=state.value,
                            spark_state=spark_state,
                            search_until=None,
                            **({} if message is None else {"message": message[:MAX_WHY_CHARS]}),
                        )
                        .execution_options(**NO_PRE_READ)
                    )
                    if not _rowcount(moved):
                        return None
                    if also is not None:
                        also(session.connection())
                    row = session.get(RequestRow, request_id)
                    assert row is not None
                    return _record(row)
            except IntegrityError as exc:
                taken = self._withdraw(request_id, submission_id, withdraw)
                if taken is not None:
                    raise taken from exc
        raise RequestConflict(f"driver {submission_id!r} kept conflicting with changing requests")

    def _withdraw(
        self, request_id: str, submission_id: str, withdraw: bool = True
    ) -> DriverTaken | None:
        """Drop our SUBMITTING request (unless not ``withdraw``) if another one tracks
        ``submission_id``; say which.

        None when there is nothing to withdraw: the other request ended, or ours moved on.
        """
        with self._tx() as session:
            ours = session.get(RequestRow, request_id)
            if ours is None:
                return None
            tracker = _tracker(session, ours.cluster, submission_id, request_id)
            if tracker is None:
                return None  # it ended in between: try to record ours again
            message = (
                f"Spark created driver {submission_id!r} for request {request_id!r}, but "
                f"{_taken(tracker)}"
            )
            if not withdraw:
                return DriverTaken(message, tracker.request_id)
            message += f"; request {request_id!r} was withdrawn"
            dropped = session.execute(
                delete(RequestRow)
                .where(
                    RequestRow.request_id == request_id,
                    RequestRow.phase == Phase.SUBMITTING.value,
                )
                .execution_options(**NO_PRE_READ)
            )
            # Not dropped: recovery resolved ours meanwhile, and the retried UPDATE will say so.
            return DriverTaken(message, tracker.request_id) if _rowcount(dropped) else None

    @_translate_db_errors
    def resolve_submitting(self, request_id: str, final_state: DriverState, message: str) -> bool:
        """Give an interrupted submission its outcome (SUBMITTING -> PUBLISHING)."""
        fixed = self._fix(request_id, (Phase.SUBMITTING.value,), final_state, message)
        return fixed is not None

    @_translate_db_errors
    def purge_done(self, before: datetime, batch: int) -> int:
        """Delete up to ``batch`` requests whose event went out and that ended before
        ``before``, oldest first; returns how many. With the other writes (one commit at a
        time), so it never deadlocks with them, and holds them for one batch only."""
        oldest = (
            select(_COLUMNS.request_id)
            .where(_COLUMNS.phase == Phase.DONE.value, _COLUMNS.completed_at < before)
            .order_by(_COLUMNS.phase, _COLUMNS.completed_at)
            .limit(batch)
        )
        statement = delete(_REQUESTS).where(_COLUMNS.request_id.in_(oldest))
        return int(self._group.run(lambda conn: _rowcount(conn.execute(statement))))

    @_translate_db_errors
    def start_search(
        self,
        request_id: str,
        until: datetime,
        why: str,
        also: Callable[[Connection], None] | None = None,
    ) -> bool:
        """Look for the driver of a create that may have landed until ``until``: the request
        stays SUBMITTING, and ``also`` writes its poll job (which searches) in the same
        transaction. False if the request moved on, or is already searched for."""
        statement = (
            update(_REQUESTS)
            .where(
                _COLUMNS.request_id == request_id,
                _COLUMNS.phase == Phase.SUBMITTING.value,
                _COLUMNS.search_until.is_(None),
            )
            .values(search_until=until, message=why[:MAX_WHY_CHARS])
        )

        def write(conn: Connection) -> bool:
            if not _rowcount(conn.execute(statement)):
                return False
            if also is not None:
                also(conn)
            return True

        return bool(self._group.run(write))

    @_translate_db_errors
    def submitting_since(self, cutoff: datetime) -> list[JobRecord]:
        """Requests still SUBMITTING that were recorded before ``cutoff``, and not searched
        for yet."""
        query = select(RequestRow).where(
            RequestRow.phase == Phase.SUBMITTING.value,
            RequestRow.submitted_at < cutoff,
            RequestRow.search_until.is_(None),
        )
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    @_translate_db_errors
    def get(self, request_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(_GET, {"rid": request_id}).first()
        return None if row is None else self._with_counts(_record(row))

    @_translate_db_errors
    def page(
        self,
        listing: JobFilter,
        limit: int,
        offset: int = 0,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobRecord]:
        """Records ordered by submission time (oldest first), from ``offset``, or past ``after``
        (a record's submitted_at and request_id: one range of an index, however deep)."""
        query = _matching(select(_REQUESTS), listing)
        if after is not None:
            query = query.where(
                tuple_(_COLUMNS.submitted_at, _COLUMNS.request_id)
                > tuple_(
                    literal(after[0], _COLUMNS.submitted_at.type),
                    literal(after[1], _COLUMNS.request_id.type),
                )
            )
        query = query.order_by(_COLUMNS.submitted_at, _COLUMNS.request_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset))
            return [self._with_counts(_record(row)) for row in rows]

    @_translate_db_errors
    def count(self, listing: JobFilter, up_to: int) -> int | None:
        """How many records match: exact up to ``up_to``, None beyond, so a count never reads
        the whole history."""
        matching = _matching(select(_COLUMNS.request_id), listing)
        query = select(func.count()).select_from(matching.limit(up_to + 1).subquery())
        with self._sessions() as session:
            total = session.scalar(query) or 0
        return total if total <= up_to else None

    @_translate_db_errors
    def record_poll(self, record: JobRecord, status: DriverStatus) -> JobRecord | None:
        """Count one status answer of ``record``'s driver and keep what it changed.

        An answer that changes nothing but the counters writes nothing now (see
        :meth:`flush_poll_counts`). Returns the record as it is now, or None when the request
        left the phases that ask Spark meanwhile (a cancel elsewhere): read it again then."""
        now = utcnow()
        changes: dict[str, object] = {}
        columns: dict[str, object] = {}  # beyond the record fields of the same name
        if not status.found:
            changes["unknown_polls"] = record.unknown_polls + 1
        else:
            assert status.state is not None
            if status.state != record.state:
                changes["state"] = status.state
            if status.raw_state != record.spark_state:
                changes["spark_state"] = status.raw_state
            if status.message and status.message != record.message:
                changes["message"] = status.message
            if record.unknown_polls:
                changes["unknown_polls"] = 0
            if started(record, status):
                changes["started_at"] = now
                changes["worker"] = Worker(id=status.worker_id or "", host=status.worker_host)
                columns = {"worker_id": status.worker_id, "worker_host": status.worker_host}
        if not changes:
            with self._counts_lock:
                n, _ = self._counts.get(record.request_id, (0, now))
                self._counts[record.request_id] = (n + 1, now)
            return record.model_copy(update={"polls": record.polls + 1, "last_polled_at": now})
        taken = self._take_count(record.request_id)
        earlier = 0 if taken is None else taken[0]
        values: dict[str, object] = {
            **{key: value for key, value in changes.items() if key != "worker"},
            **columns,
            "polls": _REQUESTS.c.polls + earlier + 1,
            "last_polled_at": now,
        }
        if not status.found:
            values["unknown_polls"] = _REQUESTS.c.unknown_polls + 1
        elif "state" in changes:
            values["state"] = status.state.value if status.state else None
        statement = (
            update(_REQUESTS)
            .where(
                _REQUESTS.c.request_id == record.request_id,
                _REQUESTS.c.phase.in_(ASKING_SPARK),
            )
            .values(**values)
        )
        try:
            moved = self._group.run(lambda conn: _rowcount(conn.execute(statement)))
        except BaseException:
            self._restore_count(record.request_id, taken)
            raise
        if not moved:
            return None
        return record.model_copy(
            update={**changes, "polls": record.polls + 1, "last_polled_at": now}
        )

    @_translate_db_errors
    def mark_cancelling(self, request_id: str, message: str) -> bool:
        """A kill was asked of Spark (POLLING -> CANCELLING); False if the request moved on."""
        with self._tx() as session:
            result = session.execute(
                update(RequestRow)
                .where(RequestRow.request_id == request_id, RequestRow.phase == Phase.POLLING.value)
                .values(phase=Phase.CANCELLING.value, cancel_requested_at=utcnow(), message=message)
            )
            return bool(_rowcount(result))

    @_translate_db_errors
    def complete(
        self,
        request_id: str,
        final_state: DriverState,
        message: str | None,
        seen: DriverStatus | None = None,
        phase: Phase | None = None,
        fence: Fence | None = None,
        details: EndDetails | None = None,
        at: datetime | None = None,
    ) -> JobRecord | None:
        """Fix the request's outcome once (-> PUBLISHING) and return the record as stored; None
        if it was already fixed, or is no longer in ``phase`` (the phase the caller decided from),
        or ``fence`` (the leader's, for a poll's decision) no longer holds.

        ``seen`` is the status answer that showed the ending: counted as a poll, and Spark's
        word for the state (and its worker) kept, in the same write, with ``details``; ``at``
        is when the ending was seen (now if None)."""
        phases = ASKING_SPARK if phase is None else (phase.value,)
        return self._fix(request_id, phases, final_state, message, seen, fence, details, at)

    def _fix(
        self,
        request_id: str,
        phases: tuple[str, ...],
        final_state: DriverState,
        message: str | None,
        seen: DriverStatus | None = None,
        fence: Fence | None = None,
        details: EndDetails | None = None,
        at: datetime | None = None,
    ) -> JobRecord | None:
        now = at or utcnow()
        taken = self._take_count(request_id)  # the polls counted so far go into the event
        polls, last = taken if taken is not None else (0, None)
        if seen is not None:
            polls, last = polls + 1, now
        params = {
            "rid": request_id,
            "phases": list(phases),
            "state": final_state.value,
            "at": now,
            "eid": event_id_for(request_id),
            "message": message or None,
            "polls": polls,
            "last": last,
            "seen": seen is not None,
            "spark": None if seen is None else seen.raw_state,
            **_detail_params(seen, details),
        }
        returning = self.engine.dialect.update_returning
        if fence is None:
            statement = _FIX_RETURNING if returning else _FIX
        else:
            statement = _FENCED_FIX_RETURNING if returning else _FENCED_FIX
            params |= {"shard": fence.shard, "epoch": fence.epoch}

        def write(conn: Connection) -> Any:
            if returning:
                return conn.execute(statement, params).first()
            return _rowcount(conn.execute(statement, params))

        try:
            fixed = self._group.run(write)
        except BaseException:
            self._restore_count(request_id, taken)
            raise
        if not fixed:
            return None
        return _record(fixed) if returning else self.get(request_id)

    @_translate_db_errors
    def take_lease(
        self, shard: int, holder: str, shards: int = 1, conn: Connection | None = None
    ) -> Fence:
        """``holder`` has just taken the lease of ``shard`` of ``shards``: count it, and return
        the fence of the holder's writes from now on. ``conn`` is the session holding the lease
        (one statement there: it holds the lock as the count lands), or None to use the pool.

        The count lands only while the store is sliced into ``shards`` (:meth:`settle_shards`):
        a replica started with another count never leads. Raises ConfigMismatch then."""
        dialect = self.engine.dialect.name
        insert_into = pg_insert if dialect == "postgresql" else sqlite_insert
        in_force = (
            select(_LAYOUT.c.id)
            .where(_LAYOUT.c.id == LAYOUT_ID, _LAYOUT.c.shards == shards)
            .exists()
        )
        statement = insert_into(_LEASES).from_select(
            ["shard", "epoch", "holder", "taken_at"],
            select(
                literal(shard), literal(1), literal(holder), literal(utcnow(), UTCDateTime())
            ).where(in_force),
        )
        counted = statement.on_conflict_do_update(
            index_elements=[_LEASES.c.shard],
            set_={
                "epoch": _LEASES.c.epoch + 1,
                "holder": statement.excluded.holder,
                "taken_at": statement.excluded.taken_at,
            },
            where=in_force,
        ).returning(_LEASES.c.epoch)
        if conn is not None:
            epoch = conn.scalar(counted)
        else:
            with self.engine.begin() as pooled:
                epoch = pooled.scalar(counted)
        if epoch is None:
            raise ConfigMismatch(
                f"POLLER_SHARDS is {shards}, but the store is sliced into "
                f"{self.shards_in_force()} shard(s) now: start every replica with that count"
            )
        return Fence(shard, int(epoch))

    @_translate_db_errors
    def settle_shards(self, shards: int) -> int:
        """Slice the store into ``shards`` from now on. Another count than the one in force is
        refused (ConfigMismatch) while any request is not done (it sits in the job table of its
        shard under that count) or another replica runs (PostgreSQL: holds a lease or counts
        itself a member; it would go on with the old count). Replicas starting together are no
        obstacle: none holds either yet. Of two starting with different counts, the later to
        settle wins, and the other stops at its first lease or beat. Returns the count before (a
        store from before shards had 1)."""
        dialect = self.engine.dialect.name
        insert_into = pg_insert if dialect == "postgresql" else sqlite_insert
        with self.engine.begin() as conn:
            conn.execute(
                insert_into(_LAYOUT).values(id=LAYOUT_ID, shards=1).on_conflict_do_nothing()
            )
            before = conn.scalar(
                select(_LAYOUT.c.shards).where(_LAYOUT.c.id == LAYOUT_ID).with_for_update()
            )
            assert before is not None
            if before == shards:
                return shards
            in_flight = conn.scalar(
                select(func.count()).select_from(_REQUESTS).where(_REQUESTS.c.phase != "done")
            )
            running = 0
            if dialect == "postgresql":
                running = conn.scalar(
                    # One replica holds several such locks, each on a session of its own.
                    text("SELECT count(DISTINCT a.application_name)" + OUR_LOCKS),
                    OUR_LOCKS_PARAMS,
                )
            if in_flight or running:
                raise ConfigMismatch(
                    f"POLLER_SHARDS is {shards}, but the store is sliced into {before} shard(s) "
                    f"and {in_flight} request(s) are not done, {running} other replica(s) "
                    f"running: start with POLLER_SHARDS={before}, or let the requests end and "
                    "stop every replica before changing it"
                )
            conn.execute(update(_LAYOUT).where(_LAYOUT.c.id == LAYOUT_ID).values(shards=shards))
        logger.warning("the store is sliced into %d shard(s) from now on (was %d)", shards, before)
        return int(before)

    @_translate_db_errors
    def shards_in_force(self) -> int:
        """How many shards the store is sliced into now (1 before any replica settled it)."""
        with self.engine.connect() as conn:
            shards = conn.scalar(select(_LAYOUT.c.shards).where(_LAYOUT.c.id == LAYOUT_ID))
        return 1 if shards is None else int(shards)

    @_translate_db_errors
    def fence_holds(self, fence: Fence) -> bool:
        """Nobody has taken the lease since ``fence`` was given (asked of the database now)."""
        with self.engine.connect() as conn:
            epoch = conn.scalar(select(_LEASES.c.epoch).where(_LEASES.c.shard == fence.shard))
        return epoch == fence.epoch

    @_translate_db_errors
    def mark_published(self, request_ids: list[str]) -> None:
        """Kafka confirmed their events: the requests are done (one transaction for all)."""
        now = utcnow()

        def write(conn: Connection) -> None:
            for start in range(0, len(request_ids), IN_CHUNK):
                conn.execute(
                    update(_REQUESTS)
                    .where(
                        _REQUESTS.c.request_id.in_(request_ids[start : start + IN_CHUNK]),
                        _REQUESTS.c.phase == Phase.PUBLISHING.value,
                    )
                    .values(phase=Phase.DONE.value, published_at=now)
                )

        self._group.run(write)

    @_translate_db_errors
    def active_ids(self) -> set[str]:
        """Requests that must have a poll job: still polling, their event not yet confirmed, or
        their driver searched for."""
        with self._sessions() as session:
            query = select(RequestRow.request_id).where(
                RequestRow.phase.in_(ACTIVE_PHASES) | _searching()
            )
            return set(session.scalars(query))

    @_translate_db_errors
    def open_counts(self) -> list[tuple[str, str, int, datetime]]:
        """(cluster, phase, requests, earliest entry into the phase) over requests not done: one
        grouped read, for the metrics. A request enters cancelling when the cancel is asked,
        publishing when its ending is fixed, and the others when it is submitted."""
        query = (
            select(
                RequestRow.cluster,
                RequestRow.phase,
                func.count(),
                func.min(RequestRow.submitted_at),
                func.min(RequestRow.cancel_requested_at),
                func.min(RequestRow.completed_at),
            )
            .where(RequestRow.phase != Phase.DONE.value)
            .group_by(RequestRow.cluster, RequestRow.phase)
        )
        groups = []
        with self._sessions() as session:
            for cluster, phase, count, submitted, cancelled, completed in session.execute(query):
                entered = {"cancelling": cancelled, "publishing": completed}.get(phase)
                groups.append((cluster, phase, int(count), entered or submitted))
        return groups

    @_translate_db_errors
    def asking_spark_outside(self, clusters: Iterable[str]) -> dict[str, list[str]]:
        """Requests still waiting on a driver of a cluster not in ``clusters``, by cluster."""
        query = select(RequestRow.cluster, RequestRow.request_id).where(
            RequestRow.phase.in_(ASKING_SPARK), RequestRow.cluster.not_in(list(clusters))
        )
        found: dict[str, list[str]] = {}
        with self._sessions() as session:
            for cluster, request_id in session.execute(query):
                found.setdefault(cluster, []).append(request_id)
        return found
