"""Our request records: queries and transactions. Returns schemas, never ORM rows."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from poller.errors import RequestConflict, StoreUnavailable
from poller.models import Base, RequestRow
from poller.schemas import DriverState, JobRecord, Phase, event_id_for

P = ParamSpec("P")
R = TypeVar("R")

ACTIVE_PHASES = (Phase.POLLING.value, Phase.CANCELLING.value, Phase.PUBLISHING.value)
ASKING_SPARK = (Phase.POLLING.value, Phase.CANCELLING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _translate_db_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Map a lost or refused database connection to StoreUnavailable at this adapter's edge."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except OperationalError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"database unavailable: {type(exc.orig).__name__}") from exc
            raise

    return wrapper


def _record(row: RequestRow) -> JobRecord:
    published = row.published_at is not None
    submitted_at = _as_utc(row.submitted_at)
    assert submitted_at is not None
    return JobRecord(
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
        cancel_requested_at=_as_utc(row.cancel_requested_at),
        submitted_at=submitted_at,
        last_polled_at=_as_utc(row.last_polled_at),
        completed_at=_as_utc(row.completed_at),
        event_id=row.event_id if published else None,
    )


class RequestStore:
    """CRUD for request records, with the compare-and-set steps the poll job relies on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @_translate_db_errors
    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

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
    ) -> JobRecord:
        """Record a new request in phase SUBMITTING; raises RequestConflict if the id is taken."""
        row = RequestRow(
            request_id=request_id,
            cluster=cluster,
            submission_id=submission_id,
            phase=Phase.SUBMITTING.value,
            state=DriverState.SUBMITTING.value,
            labels=labels,
            polls=0,
            unknown_polls=0,
            submitted_at=utcnow(),
        )
        try:
            with self._tx() as session:
                session.add(row)
        except IntegrityError as exc:
            raise RequestConflict(f"request_id {request_id!r} already exists") from exc
        return _record(row)

    @_translate_db_errors
    def delete_submitting(self, request_id: str) -> None:
        """Forget a request whose submission Spark refused (nothing else references it)."""
        with self._tx() as session:
            row = session.get(RequestRow, request_id)
            if row is not None and row.phase == Phase.SUBMITTING.value:
                session.delete(row)

    @_translate_db_errors
    def mark_submitted(
        self, request_id: str, submission_id: str, state: DriverState
    ) -> JobRecord | None:
        """Spark accepted (or we adopted) the driver: from here on the poll job owns the request.

        None if the request is no longer SUBMITTING (recovery already resolved it)."""
        with self._tx() as session:
            row = session.get(RequestRow, request_id, with_for_update=True)
            if row is None or row.phase != Phase.SUBMITTING.value:
                return None
            row.submission_id = submission_id
            row.phase = Phase.POLLING.value
            row.state = state.value
            return _record(row)

    @_translate_db_errors
    def resolve_submitting(self, request_id: str, final_state: DriverState, message: str) -> bool:
        """Give an interrupted submission its outcome (SUBMITTING -> PUBLISHING)."""
        return self._fix(request_id, (Phase.SUBMITTING.value,), final_state, message)

    @_translate_db_errors
    def submitting_since(self, cutoff: datetime) -> list[JobRecord]:
        """Requests still SUBMITTING that were recorded before ``cutoff``."""
        query = select(RequestRow).where(
            RequestRow.phase == Phase.SUBMITTING.value, RequestRow.submitted_at < cutoff
        )
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    @_translate_db_errors
    def get(self, request_id: str) -> JobRecord | None:
        with self._sessions() as session:
            row = session.get(RequestRow, request_id)
            return None if row is None else _record(row)

    @_translate_db_errors
    def page(
        self, state: DriverState | None, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        """Records ordered by submission time (oldest first), and the total that match."""
        query = select(RequestRow)
        count = select(func.count()).select_from(RequestRow)
        if state is not None:
            query = query.where(RequestRow.state == state.value)
            count = count.where(RequestRow.state == state.value)
        query = query.order_by(RequestRow.submitted_at, RequestRow.request_id)
        with self._sessions() as session:
            rows = session.scalars(query.limit(limit).offset(offset)).all()
            total = session.scalar(count) or 0
            return [_record(row) for row in rows], total

    @_translate_db_errors
    def record_poll(
        self,
        request_id: str,
        status_state: DriverState | None,
        raw_state: str | None,
        message: str | None,
    ) -> None:
        """Count one status call; ``status_state`` None means Spark did not know the driver."""
        now = utcnow()
        values: dict[str, object] = {"polls": RequestRow.polls + 1, "last_polled_at": now}
        if status_state is None:
            values["unknown_polls"] = RequestRow.unknown_polls + 1
        else:
            values.update(state=status_state.value, spark_state=raw_state, unknown_polls=0)
            if message:
                values["message"] = message
        with self._tx() as session:
            session.execute(
                update(RequestRow)
                .where(RequestRow.request_id == request_id, RequestRow.phase.in_(ASKING_SPARK))
                .values(**values)
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
            return bool(getattr(result, "rowcount", 0))

    @_translate_db_errors
    def complete(self, request_id: str, final_state: DriverState, message: str | None) -> bool:
        """Fix the request's outcome once (-> PUBLISHING); False if it was already fixed."""
        return self._fix(request_id, ASKING_SPARK, final_state, message)

    def _fix(
        self,
        request_id: str,
        phases: tuple[str, ...],
        final_state: DriverState,
        message: str | None,
    ) -> bool:
        values: dict[str, object] = {
            "phase": Phase.PUBLISHING.value,
            "state": final_state.value,
            "completed_at": utcnow(),
            "event_id": event_id_for(request_id),
        }
        if message:
            values["message"] = message
        with self._tx() as session:
            result = session.execute(
                update(RequestRow)
                .where(RequestRow.request_id == request_id, RequestRow.phase.in_(phases))
                .values(**values)
            )
            return bool(getattr(result, "rowcount", 0))

    @_translate_db_errors
    def mark_published(self, request_id: str) -> None:
        """Kafka confirmed the event: the request is done."""
        with self._tx() as session:
            session.execute(
                update(RequestRow)
                .where(
                    RequestRow.request_id == request_id, RequestRow.phase == Phase.PUBLISHING.value
                )
                .values(phase=Phase.DONE.value, published_at=utcnow())
            )

    @_translate_db_errors
    def active_ids(self) -> set[str]:
        """Requests that must have a poll job: still polling, or their event not yet confirmed."""
        with self._sessions() as session:
            query = select(RequestRow.request_id).where(RequestRow.phase.in_(ACTIVE_PHASES))
            return set(session.scalars(query))
