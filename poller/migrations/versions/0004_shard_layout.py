"""The store's shard count, in a table of one row: a start with another count is refused while
requests are in flight (they sit in the job tables of the shards they hash to), and a lease is
taken only under the count in force.

A new table: the release before this one never reads it, so both run side by side during a
rolling update. A store without the row had one shard.

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
    op.create_table(
        "poller_layout",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("shards", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("poller_layout")
