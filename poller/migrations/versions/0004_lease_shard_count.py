"""The shard count each lease was taken with: a start with another count is refused while
requests are in flight (they sit in the job tables of the shards they hash to).

Rows written before have one shard (the server default); the release before this one never
names the column, so both run side by side during a rolling update.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "poller_leases",
        sa.Column("shards", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    op.drop_column("poller_leases", "shards")
