"""The schema. Alembic migrations in ``migrations/`` create exactly these tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)

from stitchwork.storage.types import UTCDateTime, json_type

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Integer on SQLite so the column aliases the rowid and autoincrements.
EventId = BigInteger().with_variant(Integer(), "sqlite")

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("workspace_id", Uuid, ForeignKey("workspaces.id"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)

runner_jobs = Table(
    "runner_jobs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("workspace_id", Uuid, ForeignKey("workspaces.id"), nullable=False),
    Column("type", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("queue_name", String(100), nullable=False, server_default="default"),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("payload", json_type(), nullable=False),
    Column("result", json_type()),
    Column("error", Text),
    Column("progress_percent", Integer, nullable=False, server_default=text("0")),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("max_attempts", Integer, nullable=False),
    Column("idempotency_key", String(200)),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("last_event_seq", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", UTCDateTime),
    Column("run_after", UTCDateTime),
    Column("issue_ref", String(300)),
    Column("agent_profile", String(100)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("queued_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("workspace_id", "idempotency_key"),
    # The lease sweeper: running jobs by lease expiry.
    Index(
        "ix_runner_jobs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    # Listing: newest first within a workspace (ids are time-ordered), optionally by status.
    Index("ix_runner_jobs_list", "workspace_id", "id"),
    Index("ix_runner_jobs_status", "workspace_id", "status", "id"),
    Index("ix_runner_jobs_issue_ref", "workspace_id", "issue_ref"),
)

# The reservation query walks queued jobs in exactly its ORDER BY (priority DESC, run_after,
# id), so taking the next jobs never sorts the backlog (migration 0003).
Index(
    "ix_runner_jobs_reserve",
    runner_jobs.c.priority.desc(),
    runner_jobs.c.run_after,
    runner_jobs.c.id,
    postgresql_where=text("status = 'queued'"),
    sqlite_where=text("status = 'queued'"),
)

job_steps = Table(
    "job_steps",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("job_id", Uuid, ForeignKey("runner_jobs.id"), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("phase", String(20), nullable=False),
    Column("type", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("output_tail", Text),
    Column("error", Text),
    Column("tokens_input", Integer),
    Column("tokens_output", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    UniqueConstraint("job_id", "ordinal"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("job_id", Uuid, ForeignKey("runner_jobs.id")),
    Column("workspace_id", Uuid),
    Column("execution_id", Uuid),
    Column("step_id", Uuid),
    Column("seq", Integer, nullable=False),
    Column("type", String(50), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("payload", json_type(), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("job_id", "seq"),
    # Workspace-wide streams and execution streams resume by global id.
    Index("ix_job_events_workspace", "workspace_id", "id"),
    Index("ix_job_events_execution", "execution_id", "id"),
)
# Postgres and SQLite triggers (migration 0002) refuse UPDATE, DELETE (and TRUNCATE) on
# job_events: the event log is append-only in the database itself, not only in the code.

queue_states = Table(
    "queue_states",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", UTCDateTime, nullable=False),
)
