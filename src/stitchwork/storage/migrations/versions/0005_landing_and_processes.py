"""Exactly-once landing and orphan-free processes: when a job began moving its target branch
(``runner_jobs.landing_at``), the process groups jobs start (``job_processes``) and which hosts
are alive (``hosts``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stitchwork.storage.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OPEN = sa.text("ended_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("runner_jobs") as batch:
        batch.add_column(sa.Column("landing_at", UTCDateTime()))
    op.create_table(
        "job_processes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("pgid", sa.Integer(), nullable=False),
        sa.Column("leader_start", sa.BigInteger()),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("owner_start", sa.BigInteger()),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime()),
    )
    op.create_index(
        "ix_job_processes_open_host",
        "job_processes",
        ["host"],
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )
    op.create_index(
        "ix_job_processes_open_job",
        "job_processes",
        ["job_id"],
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )
    op.create_table(
        "hosts",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hosts")
    op.drop_index("ix_job_processes_open_job", table_name="job_processes")
    op.drop_index("ix_job_processes_open_host", table_name="job_processes")
    op.drop_table("job_processes")
    with op.batch_alter_table("runner_jobs") as batch:
        batch.drop_column("landing_at")
