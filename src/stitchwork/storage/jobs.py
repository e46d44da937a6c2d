"""The SQL job store: submission, reads and user actions (cancel, retry) on ``runner_jobs``.

Worker-side transitions (leases, completion, failure, sweeping) live in ``leases.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.clock import Clock
from stitchwork.domain.events import Event, EventType
from stitchwork.domain.jobs import (
    CANCELLABLE_JOB_STATUSES,
    RETRYABLE_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    Job,
    JobStatus,
    NewJob,
    check_retry,
    check_transition,
)
from stitchwork.errors import Conflict, InvalidTransition, NotFound
from stitchwork.storage.db import Database
from stitchwork.storage.leases import LeaseOperations
from stitchwork.storage.rows import (
    EventWriter,
    Tx,
    event_from_row,
    event_row,
    insert_events,
    job_from_row,
    transition_jobs,
)
from stitchwork.storage.tables import job_events, runner_jobs
from stitchwork.storage.types import new_id


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A ``NewJob`` with every default resolved by the service layer."""

    new: NewJob
    queue_name: str
    max_attempts: int
    execution_id: UUID | None = None  # the job runs this node of this execution
    node_id: str | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    created: bool  # False when an idempotency key matched an existing job


class SqlJobStore(LeaseOperations):
    """``runner_jobs`` and ``job_events`` on SQLite or Postgres. The database is the truth."""

    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        self.db: Database = writer.db
        self.clock: Clock = writer.clock

    # -- submission ---------------------------------------------------------------------------

    async def create_jobs(
        self, workspace_id: UUID, specs: Sequence[JobSpec], *, actor: str
    ) -> list[Submitted]:
        """Insert jobs as ``queued`` with their ``job.created`` and ``job.queued`` events.

        One transaction for the whole batch. A spec whose idempotency key already exists in the
        workspace returns the existing job instead (``created=False``).
        """
        for attempt in range(2):
            try:
                async with self.writer.write() as tx:
                    return await self.create_jobs_in(tx, workspace_id, specs, actor=actor)
            except IntegrityError:
                # Two submitters raced on one idempotency key (Postgres only: SQLite writers
                # are serialised). The loser's second pass finds the winner's row.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def create_jobs_in(
        self, tx: Tx, workspace_id: UUID, specs: Sequence[JobSpec], *, actor: str
    ) -> list[Submitted]:
        """``create_jobs`` inside the caller's transaction (an execution starting nodes)."""
        conn = tx.conn
        now = self.clock.now()
        keys = [s.new.idempotency_key for s in specs if s.new.idempotency_key]
        existing: dict[str, Job] = {}
        if keys:
            rows = await conn.execute(
                select(runner_jobs).where(
                    runner_jobs.c.workspace_id == workspace_id,
                    runner_jobs.c.idempotency_key.in_(keys),
                )
            )
            existing = {r["idempotency_key"]: job_from_row(r) for r in rows.mappings()}

        out: list[Submitted] = []
        job_rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for spec in specs:
            key = spec.new.idempotency_key
            if key and key in existing:
                earlier = existing[key]
                if (earlier.type, earlier.payload) != (spec.new.type, spec.new.payload):
                    # Same key, different request: a client bug, never a silent replay.
                    raise Conflict(
                        f"idempotency key {key!r} was already used for a different request "
                        f"(job {earlier.id}, type {earlier.type!r}); use a new key",
                        field="idempotency_key",
                        job_id=str(earlier.id),
                    )
                out.append(Submitted(earlier, created=False))
                continue
            new = spec.new
            run_after = max(new.run_after, now) if new.run_after else now
            job_id = new_id()
            row: dict[str, Any] = {
                "id": job_id,
                "workspace_id": workspace_id,
                "type": new.type,
                "status": JobStatus.QUEUED.value,
                "queue_name": spec.queue_name,
                "priority": new.priority,
                "payload": new.payload,
                "result": None,
                "error": None,
                "progress_percent": 0,
                "attempt": 1,
                "max_attempts": spec.max_attempts,
                "idempotency_key": key,
                "version": 1,
                "last_event_seq": 2,
                "lease_owner": None,
                "lease_expires_at": None,
                "run_after": run_after,
                "issue_ref": new.issue_ref,
                "agent_profile": new.agent_profile,
                "execution_id": spec.execution_id,
                "node_id": spec.node_id,
                "created_at": now,
                "queued_at": now,
                "started_at": None,
                "completed_at": None,
                "updated_at": now,
            }
            if key:
                existing[key] = job_from_row(row)  # a key repeated within one batch
            job_rows.append(row)
            created: dict[str, Any] = {
                "status": JobStatus.PENDING.value,
                "type": new.type,
                "priority": new.priority,
                "issue_ref": new.issue_ref,
            }
            if new.metadata is not None:
                created["metadata"] = new.metadata
            events.append(
                event_row(
                    job_id,
                    1,
                    EventType.JOB_CREATED,
                    actor,
                    created,
                    now,
                    workspace_id=workspace_id,
                )
            )
            events.append(
                event_row(
                    job_id,
                    2,
                    EventType.JOB_QUEUED,
                    actor,
                    {
                        "status": JobStatus.QUEUED.value,
                        "attempt": 1,
                        "queue": spec.queue_name,
                        "run_after": run_after.isoformat(),
                    },
                    now,
                    workspace_id=workspace_id,
                )
            )
            out.append(Submitted(job_from_row(row), created=True))
        if job_rows:
            await conn.execute(insert(runner_jobs), job_rows)
            await insert_events(tx, events)
            await self.writer.enqueued(tx, [s.job for s in out if s.created])
        return out

    # -- reads --------------------------------------------------------------------------------

    async def find_job(self, job_id: UUID, *, workspace_id: UUID | None = None) -> Job | None:
        stmt = select(runner_jobs).where(runner_jobs.c.id == job_id)
        if workspace_id is not None:
            stmt = stmt.where(runner_jobs.c.workspace_id == workspace_id)
        async with self.db.read() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return job_from_row(row) if row else None

    async def get_job(self, job_id: UUID, *, workspace_id: UUID | None = None) -> Job:
        job = await self.find_job(job_id, workspace_id=workspace_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", job_id=str(job_id))
        return job

    async def list_jobs(
        self,
        workspace_id: UUID,
        *,
        status: JobStatus | None = None,
        type_: str | None = None,
        issue_ref: str | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Newest first. ``before`` is the last id of the previous page (keyset pagination)."""
        stmt = select(runner_jobs).where(runner_jobs.c.workspace_id == workspace_id)
        if status is not None:
            stmt = stmt.where(runner_jobs.c.status == status.value)
        if type_ is not None:
            stmt = stmt.where(runner_jobs.c.type == type_)
        if issue_ref is not None:
            stmt = stmt.where(runner_jobs.c.issue_ref == issue_ref)
        if before is not None:
            stmt = stmt.where(runner_jobs.c.id < before)
        stmt = stmt.order_by(runner_jobs.c.id.desc()).limit(limit)
        async with self.db.read() as conn:
            return [job_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def list_events(
        self,
        job_id: UUID,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Sequence[str] = (),
    ) -> list[Event]:
        """A job's events with ``seq > after`` in seq order; ``types`` are glob patterns."""
        stmt = (
            select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.seq > after)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        if types:
            stmt = stmt.where(_type_filter(types, sqlite=self.db.is_sqlite))
        async with self.db.read() as conn:
            return [event_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def list_workspace_events(
        self,
        workspace_id: UUID,
        *,
        after_id: int = 0,
        limit: int = 1000,
        types: Sequence[str] = (),
        job_id: UUID | None = None,
    ) -> list[Event]:
        """A workspace's events with a global ``id > after_id``, in id order."""
        stmt = (
            select(job_events)
            .where(job_events.c.workspace_id == workspace_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
            .limit(limit)
        )
        if types:
            stmt = stmt.where(_type_filter(types, sqlite=self.db.is_sqlite))
        if job_id is not None:
            stmt = stmt.where(job_events.c.job_id == job_id)
        async with self.db.read() as conn:
            return [event_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def list_events_since(self, after_id: int, *, limit: int = 1000) -> list[Event]:
        """Every event with a global ``id > after_id``, in id order (the event tailer)."""
        stmt = (
            select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id)
        ).limit(limit)
        async with self.db.read() as conn:
            return [event_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def last_event_id(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.max(job_events.c.id)))).scalar() or 0)

    async def count_by_status(self, workspace_id: UUID | None = None) -> dict[JobStatus, int]:
        stmt = select(runner_jobs.c.status, func.count()).group_by(runner_jobs.c.status)
        if workspace_id is not None:
            stmt = stmt.where(runner_jobs.c.workspace_id == workspace_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update({JobStatus(status): n for status, n in rows})
        return counts

    async def unfinished_ids(self, type_: str) -> set[str]:
        """Ids of every job of ``type_`` that has not ended (any workspace)."""
        stmt = select(runner_jobs.c.id).where(
            runner_jobs.c.type == type_,
            runner_jobs.c.status.not_in([s.value for s in TERMINAL_JOB_STATUSES]),
        )
        async with self.db.read() as conn:
            return {str(row[0]) for row in await conn.execute(stmt)}

    # -- user actions -------------------------------------------------------------------------

    async def cancel_job(
        self, job_id: UUID, *, workspace_id: UUID | None, actor: str, reason: str | None = None
    ) -> tuple[Job, JobStatus]:
        """Cancel a pending, queued or running job; returns it and its previous status.

        A running job's worker is told separately (``QueueBackend.notify_cancelled``); its late
        result is then dropped by the compare-and-set.

        A job that began landing its change (``landing_at``) is refused: its target branch,
        not a cancellation, decides how it ends (completed with the landed commit, or failed).
        """
        async with self.writer.write() as tx:
            job = await self._locked(tx.conn, job_id, workspace_id)
            check_transition(job.id, job.status, JobStatus.CANCELLED)
            landing = await tx.conn.execute(
                select(runner_jobs.c.landing_at).where(runner_jobs.c.id == job.id)
            )
            if landing.scalar_one_or_none() is not None:
                raise InvalidTransition(
                    job.id,
                    job.status.value,
                    JobStatus.CANCELLED.value,
                    reason="it has begun landing its change on its target branch; it ends as "
                    "completed (the change landed) or failed on its own",
                )
            now = self.clock.now()
            moved = await transition_jobs(
                tx,
                where=[runner_jobs.c.id == job.id, runner_jobs.c.version == job.version],
                expected=CANCELLABLE_JOB_STATUSES,
                to=JobStatus.CANCELLED,
                now=now,
                actor=actor,
                event_type=EventType.JOB_CANCELLED,
                close_steps="job cancelled",
                event_payload={"previous_status": job.status.value, "reason": reason},
                values={"lease_owner": None, "lease_expires_at": None, "completed_at": now},
            )
        return self._only(moved, job, JobStatus.CANCELLED), job.status

    async def retry_job(self, job_id: UUID, *, workspace_id: UUID | None, actor: str) -> Job:
        """Queue a failed or cancelled job again as a new attempt.

        The attempt budget grows with it (``max_attempts >= attempt``) so that a manual retry
        is never failed at once for having used up its automatic retries.
        """
        async with self.writer.write() as tx:
            job = await self._locked(tx.conn, job_id, workspace_id)
            check_retry(job.id, job.status)
            now = self.clock.now()
            attempt = job.attempt + 1
            moved = await transition_jobs(
                tx,
                where=[runner_jobs.c.id == job.id, runner_jobs.c.version == job.version],
                expected=RETRYABLE_JOB_STATUSES,
                to=JobStatus.QUEUED,
                now=now,
                actor=actor,
                event_type=EventType.JOB_RETRIED,
                event_payload={"previous_status": job.status.value, "reason": "manual"},
                values={
                    "attempt": attempt,
                    "max_attempts": max(job.max_attempts, attempt),
                    "error": None,
                    "result": None,
                    "progress_percent": 0,
                    "queued_at": now,
                    "run_after": now,
                    "started_at": None,
                    "completed_at": None,
                },
            )
            await self.writer.enqueued(tx, moved)
        return self._only(moved, job, JobStatus.QUEUED)

    async def _locked(self, conn: AsyncConnection, job_id: UUID, workspace_id: UUID | None) -> Job:
        stmt = select(runner_jobs).where(runner_jobs.c.id == job_id)
        if workspace_id is not None:
            stmt = stmt.where(runner_jobs.c.workspace_id == workspace_id)
        row = (await conn.execute(stmt.with_for_update())).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id} not found", job_id=str(job_id))
        return job_from_row(row)

    @staticmethod
    def _only(moved: list[Job], before: Job, to: JobStatus) -> Job:
        if not moved:  # only possible if the row lock was not honoured; never silently succeed
            raise InvalidTransition(before.id, before.status.value, to.value, reason="lost a race")
        return moved[0]


def _type_filter(patterns: Sequence[str], *, sqlite: bool = False) -> ColumnElement[bool]:
    """Glob patterns (``step.*``) as SQL LIKE, escaping LIKE's own wildcards.

    SQLite's LIKE ignores case (``STEP.*`` would match ``step.output``, unlike Postgres and the
    bus), so there the pattern goes through the case-sensitive GLOB, with ``[`` kept literal
    as it is in LIKE."""
    if sqlite:
        return or_(
            *(
                job_events.c.type.op("GLOB", is_comparison=True)(p.replace("[", "[[]"))
                for p in patterns
            )
        )
    clauses = []
    for pattern in patterns:
        like = (
            pattern.replace("\\", "\\\\")
            .replace("%", "\\%")
            .replace("_", "\\_")
            .replace("*", "%")
            .replace("?", "_")
        )
        clauses.append(job_events.c.type.like(like, escape="\\"))
    return or_(*clauses)
