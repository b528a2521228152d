"""Requests and their indexes, as the last release made without migrations created them.

A database that release made (``create_all``, no ``alembic_version``) is recognised at upgrade
and stamped with this revision rather than created again.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Rows that still track their driver: at most one per (cluster, submission_id).
TRACKING = "submission_id IS NOT NULL AND phase <> 'done'"


def upgrade() -> None:
    op.create_table(
        "poller_requests",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("cluster", sa.String(64), nullable=False),
        sa.Column("submission_id", sa.String(128), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spark_state", sa.String(32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("unknown_polls", sa.Integer(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_id", sa.String(36), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_poller_requests_phase", "poller_requests", ["phase"])
    op.create_index("ix_poller_requests_state", "poller_requests", ["state"])
    op.create_index("ix_poller_requests_submitted_at", "poller_requests", ["submitted_at"])
    # One driver, one request, however two adoptions race.
    op.create_index(
        "uq_poller_requests_tracked_driver",
        "poller_requests",
        ["cluster", "submission_id"],
        unique=True,
        sqlite_where=sa.text(TRACKING),
        postgresql_where=sa.text(TRACKING),
    )


def downgrade() -> None:
    op.drop_table("poller_requests")  # its indexes go with it
