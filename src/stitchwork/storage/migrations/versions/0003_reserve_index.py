"""The reservation index follows the reservation query's order, so no reserve sorts the backlog.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    op.drop_index("ix_runner_jobs_reserve", table_name="runner_jobs")
    op.create_index(
        "ix_runner_jobs_reserve",
        "runner_jobs",
        [sa.text("priority DESC"), "run_after", "id"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index("ix_runner_jobs_reserve", table_name="runner_jobs")
    op.create_index(
        "ix_runner_jobs_reserve",
        "runner_jobs",
        ["queue_name", "priority", "run_after"],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
