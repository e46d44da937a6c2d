"""Events carry their workspace (workspace-wide streams) and are append-only in the database.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY = "job_events is append-only: events are never updated or deleted"


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("workspace_id", sa.Uuid(), nullable=True))
        batch.create_index("ix_job_events_workspace", ["workspace_id", "id"])
        batch.create_index("ix_job_events_execution", ["execution_id", "id"])
    op.execute(
        "UPDATE job_events SET workspace_id = "
        "(SELECT workspace_id FROM runner_jobs WHERE runner_jobs.id = job_events.job_id)"
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION stitchwork_events_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{APPEND_ONLY}';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER job_events_append_only BEFORE UPDATE OR DELETE ON job_events "
            "FOR EACH ROW EXECUTE FUNCTION stitchwork_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER job_events_no_truncate BEFORE TRUNCATE ON job_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION stitchwork_events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER job_events_no_{action.lower()} BEFORE {action} ON job_events "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER job_events_no_truncate ON job_events")
        op.execute("DROP TRIGGER job_events_append_only ON job_events")
        op.execute("DROP FUNCTION stitchwork_events_append_only()")
    else:
        op.execute("DROP TRIGGER job_events_no_update")
        op.execute("DROP TRIGGER job_events_no_delete")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_index("ix_job_events_execution")
        batch.drop_index("ix_job_events_workspace")
        batch.drop_column("workspace_id")
