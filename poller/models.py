"""SQLAlchemy tables of our own; they live beside APScheduler's job table in the same database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Rows that still track their driver: at most one per (cluster, submission_id).
TRACKING = "submission_id IS NOT NULL AND phase <> 'done'"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC datetime, whatever the backend.

    SQLite keeps no offset (it would store a foreign zone's wall clock as if it were UTC), and
    PostgreSQL answers in the session's time zone: both are normalised here, so a record, and the
    event built from it, never depend on a server setting. A naive value is taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        return None if value is None else _utc(value)

    def process_result_value(self, value: datetime | None, _dialect: Dialect) -> datetime | None:
        return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class RequestRow(Base):
    """One transfer request; the source of truth for which poll jobs must exist."""

    __tablename__ = "poller_requests"
    __table_args__ = (
        # One driver, one request: a second request tracking the same driver would publish a
        # second event (with another event_id) and could kill the first one's driver.
        Index(
            "uq_poller_requests_tracked_driver",
            "cluster",
            "submission_id",
            unique=True,
            sqlite_where=text(TRACKING),
            postgresql_where=text(TRACKING),
        ),
        # Listings, in their order (with or without a state): a page is one range of an index,
        # however deep (0006).
        Index("ix_poller_requests_listing", "submitted_at", "request_id"),
        Index("ix_poller_requests_state_listing", "state", "submitted_at", "request_id"),
        # Requests by phase; the finished ones in the order retention deletes them (0006).
        Index("ix_poller_requests_phase_ended", "phase", "completed_at"),
    )

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(64))
    submission_id: Mapped[str | None] = mapped_column(String(128))
    phase: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    spark_state: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    unknown_polls: Mapped[int] = mapped_column(Integer, default=0)
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    event_id: Mapped[str | None] = mapped_column(String(36))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # W3C trace context of the submit call, carried by the event (CloudEvents distributed tracing).
    traceparent: Mapped[str | None] = mapped_column(String(55))
    tracestate: Mapped[str | None] = mapped_column(String(512))
    # What the event tells about the run (0005): all nullable, none known for older rows.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    detection_bound_s: Mapped[float | None] = mapped_column(Float)
    # The spark.app.name the driver was submitted with: how its application is found.
    spark_app_name: Mapped[str | None] = mapped_column(String(256))
    spark_app_id: Mapped[str | None] = mapped_column(String(128))
    spark_app_ui_url: Mapped[str | None] = mapped_column(String(1024))
    failure: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # The tag the create carried (spark.poller.tag): how its driver is found if its answer is
    # lost. Random, so no other driver can carry it.
    spark_tag: Mapped[str | None] = mapped_column(String(36))
    # While set, a create that may have landed is being looked for among the master's drivers.
    search_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LeaseRow(Base):
    """Who last took the scheduler lease of a shard, and how many times it has been taken.

    The count is the fencing token: a leader's decisive writes carry the epoch it took, and land
    only while nobody has taken the lease since (a leader that lost it without noticing yet)."""

    __tablename__ = "poller_leases"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(255))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)


LAYOUT_ID = 1  # the one row of poller_layout


class LayoutRow(Base):
    """How the store's requests are sliced into shards: one row, written before any lease is
    taken. Requests in flight sit in the job tables of the shards they hash to under this count,
    so it changes only while none is in flight, and a lease is taken only under it."""

    __tablename__ = "poller_layout"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shards: Mapped[int] = mapped_column(Integer)
