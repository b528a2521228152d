"""W3C trace context of the submit call, for the completion event.

Both nullable: rows written before have none, and the release before this one keeps running
against the new columns during a rolling update (it never names them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("poller_requests", sa.Column("traceparent", sa.String(55), nullable=True))
    op.add_column("poller_requests", sa.Column("tracestate", sa.String(512), nullable=True))


def downgrade() -> None:
    # SQLite drops a column in place since 3.35; neither column is indexed.
    op.drop_column("poller_requests", "tracestate")
    op.drop_column("poller_requests", "traceparent")
