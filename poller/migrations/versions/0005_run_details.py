"""What the completion event tells about a run: when it started, its worker, its Spark
application, why it failed; and the tag of its create, and the deadline of the search for a
create that may have landed.

All nullable: rows written before know none of it, and the release before this one keeps running
against the new columns during a rolling update (it never names them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = (
    ("started_at", sa.DateTime(timezone=True)),
    ("worker_id", sa.String(128)),
    ("worker_host", sa.String(255)),
    ("detection_bound_s", sa.Float()),
    ("spark_app_name", sa.String(256)),
    ("spark_app_id", sa.String(128)),
    ("spark_app_ui_url", sa.String(1024)),
    ("failure", sa.JSON(none_as_null=True)),
    ("spark_tag", sa.String(36)),
    ("search_until", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    # One ALTER per column on SQLite (batch mode would copy the table); cheap on PostgreSQL, as
    # a nullable column without a default rewrites nothing.
    for name, type_ in COLUMNS:
        op.add_column("poller_requests", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _type in reversed(COLUMNS):
        op.drop_column("poller_requests", name)
