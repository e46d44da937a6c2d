"""Executions: DAG plans (the plan document in its own table), their nodes, resource locks,
and jobs that run a node.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stitchwork.storage.types import UTCDateTime, json_type

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EXECUTION_EVENT = sa.text("job_id IS NULL")
BLOCKED = sa.text("blocked_since IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("workspace_id", sa.Uuid(), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("dispatch", sa.String(10), nullable=False),
        sa.Column("repo", sa.String(500), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("failure_policy", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("last_event_seq", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("peak_concurrency", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("last_event_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_executions_list", "executions", ["workspace_id", "id"])
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_table(
        "execution_plans",
        sa.Column("execution_id", sa.Uuid(), sa.ForeignKey("executions.id"), primary_key=True),
        sa.Column("plan", json_type(), nullable=False),
    )
    op.create_table(
        "execution_nodes",
        sa.Column("execution_id", sa.Uuid(), sa.ForeignKey("executions.id"), primary_key=True),
        sa.Column("node_id", sa.String(200), primary_key=True),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job_id", sa.Uuid()),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_expires_at", UTCDateTime()),
        sa.Column("error", sa.Text()),
        sa.Column("result", json_type()),
        sa.Column("ready_at", UTCDateTime()),
        sa.Column("blocked_since", UTCDateTime()),
        sa.Column("lock_wait_s", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.Column("contentions", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
    )
    op.create_index("ix_execution_nodes_job", "execution_nodes", ["job_id"])
    op.create_index(
        "ix_execution_nodes_blocked",
        "execution_nodes",
        ["blocked_since"],
        postgresql_where=BLOCKED,
        sqlite_where=BLOCKED,
    )
    op.create_table(
        "repositories",
        sa.Column("repo", sa.String(500), primary_key=True),
        sa.Column("lock_version", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "resource_locks",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("repo", sa.String(500), nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("claim", sa.String(1100), nullable=False),
        sa.Column("mode", sa.String(10), nullable=False),
        sa.Column("execution_id", sa.Uuid()),
        sa.Column("node_id", sa.String(200)),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_resource_locks_repo", "resource_locks", ["repo"])
    op.create_index("ix_resource_locks_owner", "resource_locks", ["owner"])
    with op.batch_alter_table("runner_jobs") as batch:
        batch.add_column(sa.Column("execution_id", sa.Uuid()))
        batch.add_column(sa.Column("node_id", sa.String(200)))
    op.create_index(
        "ix_job_events_execution_seq",
        "job_events",
        ["execution_id", "seq"],
        unique=True,
        postgresql_where=EXECUTION_EVENT,
        sqlite_where=EXECUTION_EVENT,
    )


def downgrade() -> None:
    op.drop_index("ix_job_events_execution_seq", table_name="job_events")
    with op.batch_alter_table("runner_jobs") as batch:
        batch.drop_column("node_id")
        batch.drop_column("execution_id")
    op.drop_table("resource_locks")
    op.drop_table("repositories")
    op.drop_table("execution_nodes")
    op.drop_table("execution_plans")
    op.drop_table("executions")
