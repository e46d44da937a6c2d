"""The schema. Alembic migrations in ``migrations/`` create exactly these tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
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
    # What the key may do (``services.auth``): admin, operator or reader, plus extra scopes
    # such as "jobs:submit:shell". No default role: whoever makes a key chooses (migration 0006).
    Column("role", String(20), nullable=False),
    Column("scopes", json_type(), nullable=False, server_default=text("'[]'")),
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
    # Set when the job runs a node of an execution (migration 0004).
    Column("execution_id", Uuid),
    Column("node_id", String(200)),
    # Set when an agent task starts moving its target branch; a crash from then on leaves the
    # outcome to be read off the target, never guessed (migration 0005).
    Column("landing_at", UTCDateTime),
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
# An execution's own events (job_id NULL) have a gapless seq per execution (migration 0004).
Index(
    "ix_job_events_execution_seq",
    job_events.c.execution_id,
    job_events.c.seq,
    unique=True,
    postgresql_where=text("job_id IS NULL"),
    sqlite_where=text("job_id IS NULL"),
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

executions = Table(
    "executions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("workspace_id", Uuid, ForeignKey("workspaces.id"), nullable=False),
    Column("name", String(200)),
    Column("status", String(20), nullable=False),
    # "jobs": the scheduler starts a runner job per node; "pull": an external orchestrator
    # takes nodes with POST /executions/{id}/next.
    Column("dispatch", String(10), nullable=False),
    Column("repo", String(500), nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("failure_policy", String(20), nullable=False),
    Column("version", Integer, nullable=False, server_default=text("1")),
    Column("last_event_seq", Integer, nullable=False, server_default=text("0")),
    Column("peak_concurrency", Integer, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_event_at", UTCDateTime, nullable=False),
    Index("ix_executions_list", "workspace_id", "id"),
    Index("ix_executions_status", "status"),
)

# The plan apart from the execution's row: the row changes with every scheduling decision, and
# SQLite rewrites a whole row (a 10,000-node plan is megabytes) on any update.
execution_plans = Table(
    "execution_plans",
    metadata,
    Column("execution_id", Uuid, ForeignKey("executions.id"), primary_key=True),
    Column("plan", json_type(), nullable=False),
)

execution_nodes = Table(
    "execution_nodes",
    metadata,
    Column("execution_id", Uuid, ForeignKey("executions.id"), primary_key=True),
    Column("node_id", String(200), primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("job_id", Uuid),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", UTCDateTime),
    Column("error", Text),
    Column("result", json_type()),
    Column("ready_at", UTCDateTime),
    Column("blocked_since", UTCDateTime),
    Column("lock_wait_s", Float, nullable=False, server_default=text("0")),
    Column("contentions", Integer, nullable=False, server_default=text("0")),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Index("ix_execution_nodes_job", "job_id"),
    # Starved ready nodes of other executions (lock reservations): only blocked ones.
    Index(
        "ix_execution_nodes_blocked",
        "blocked_since",
        postgresql_where=text("blocked_since IS NOT NULL"),
        sqlite_where=text("blocked_since IS NOT NULL"),
    ),
)

# One row per repository with locks: its row lock serialises lock decisions across processes,
# and ``lock_version`` changes with every acquire or release (so a cached lock table is reused
# only while it is current).
repositories = Table(
    "repositories",
    metadata,
    Column("repo", String(500), primary_key=True),
    Column("lock_version", Integer, nullable=False, server_default=text("0")),
)

# Held resource claims. Locks are per repository and across executions; a row is one claim of
# one owner (an execution node) in one mode.
resource_locks = Table(
    "resource_locks",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("repo", String(500), nullable=False),
    Column("owner", String(300), nullable=False),
    Column("claim", String(1100), nullable=False),
    Column("mode", String(10), nullable=False),
    Column("execution_id", Uuid),
    Column("node_id", String(200)),
    Column("acquired_at", UTCDateTime, nullable=False),
    Index("ix_resource_locks_repo", "repo"),
    Index("ix_resource_locks_owner", "owner"),
)

_OPEN = text("ended_at IS NULL")

# Every process group a job's handler starts, so that a process outliving its worker is found
# and killed, and its job's claims stay held meanwhile (migration 0005). ``owner_pid`` and
# ``owner_start`` name the worker process; ``pgid`` and ``leader_start`` the group.
job_processes = Table(
    "job_processes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("job_id", Uuid, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker_id", String(200), nullable=False),
    Column("host", String(255), nullable=False),
    Column("boot_id", String(64), nullable=False),
    Column("pgid", Integer, nullable=False),
    Column("leader_start", BigInteger),
    Column("owner_pid", Integer, nullable=False),
    Column("owner_start", BigInteger),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Index("ix_job_processes_open_host", "host", postgresql_where=_OPEN, sqlite_where=_OPEN),
    Index("ix_job_processes_open_job", "job_id", postgresql_where=_OPEN, sqlite_where=_OPEN),
)

# Hosts whose stitchwork processes are alive: each ``serve``/``worker`` refreshes its host's
# row. A recorded process group on a host not seen for a while is presumed gone with it.
hosts = Table(
    "hosts",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("boot_id", String(64), nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)
