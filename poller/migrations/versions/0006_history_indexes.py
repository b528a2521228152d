"""Indexes for history: listings in their order (with or without a state), and requests by
phase with the finished ones in the order retention deletes them. They replace the
single-column indexes on state, submitted_at and phase, which they cover.

On PostgreSQL each CREATE INDEX holds writes to the table while it builds: seconds per million
rows (bench/RESULTS.md, section 7). The release before this one never relies on the dropped
indexes for correctness, only for speed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "poller_requests"


def upgrade() -> None:
    op.create_index("ix_poller_requests_listing", TABLE, ["submitted_at", "request_id"])
    op.create_index(
        "ix_poller_requests_state_listing", TABLE, ["state", "submitted_at", "request_id"]
    )
    op.create_index("ix_poller_requests_phase_ended", TABLE, ["phase", "completed_at"])
    op.drop_index("ix_poller_requests_state", TABLE)
    op.drop_index("ix_poller_requests_submitted_at", TABLE)
    op.drop_index("ix_poller_requests_phase", TABLE)


def downgrade() -> None:
    op.create_index("ix_poller_requests_phase", TABLE, ["phase"])
    op.create_index("ix_poller_requests_submitted_at", TABLE, ["submitted_at"])
    op.create_index("ix_poller_requests_state", TABLE, ["state"])
    op.drop_index("ix_poller_requests_phase_ended", TABLE)
    op.drop_index("ix_poller_requests_state_listing", TABLE)
    op.drop_index("ix_poller_requests_listing", TABLE)
