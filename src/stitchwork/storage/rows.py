"""Row <-> domain mapping and the guarded transition every job status change goes through."""

from __future__ import annotations

from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sqlalchemy import ColumnElement, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.domain.events import Event, EventType
from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.domain.steps import StepStatus
from stitchwork.storage.tables import job_events, job_steps, runner_jobs

if TYPE_CHECKING:
    from stitchwork.bus.base import EventBus
    from stitchwork.clock import Clock
    from stitchwork.storage.db import Database


def job_from_row(row: Mapping[Any, Any]) -> Job:
    return Job(
        id=row["id"],
        workspace_id=row["workspace_id"],
        type=row["type"],
        status=JobStatus(row["status"]),
        queue_name=row["queue_name"],
        priority=row["priority"],
        payload=row["payload"],
        result=row["result"],
        error=row["error"],
        progress_percent=row["progress_percent"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        idempotency_key=row["idempotency_key"],
        version=row["version"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        run_after=row["run_after"],
        created_at=row["created_at"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        updated_at=row["updated_at"],
        issue_ref=row["issue_ref"],
        agent_profile=row["agent_profile"],
        last_event_seq=row["last_event_seq"],
        execution_id=row.get("execution_id"),
        node_id=row.get("node_id"),
    )


def event_from_row(row: Mapping[Any, Any]) -> Event:
    return Event(
        id=row["id"],
        job_id=row["job_id"],
        seq=row["seq"],
        type=row["type"],
        actor=row["actor"],
        payload=row["payload"],
        created_at=row["created_at"],
        step_id=row["step_id"],
        execution_id=row["execution_id"],
        workspace_id=row["workspace_id"],
    )


def event_row(
    job_id: UUID,
    seq: int,
    type_: EventType,
    actor: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    workspace_id: UUID | None,
    step_id: UUID | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "workspace_id": workspace_id,
        "execution_id": None,
        "step_id": step_id,
        "seq": seq,
        "type": type_.value,
        "actor": actor,
        "payload": payload,
        "created_at": now,
    }


@dataclass
class Tx:
    """A write transaction and the events it wrote (published once it commits)."""

    conn: AsyncConnection
    events: list[Event] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # Awaited after the commit, in order, before the writer returns (a broker add: the job is
    # deliverable by the time the caller hears it was queued). They must not raise.
    after_commit_async: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Repositories whose row this transaction locked, with their lock version: one row lock
    # per repository and transaction is enough.
    locked_repos: dict[str, int] = field(default_factory=dict)


# Called inside the transaction that queued (or re-queued) these jobs.
EnqueueHook = Callable[["Tx", Sequence[Job]], Awaitable[None]]


class EventWriter:
    """Opens write transactions; after each commits, its events go to the bus.

    Publishing after commit means a subscriber never sees an event the database could still
    roll back; a crash between commit and publish loses nothing, because every reader
    backfills from the database.
    """

    def __init__(self, db: Database, clock: Clock, bus: EventBus | None = None) -> None:
        self.db = db
        self.clock = clock
        self.bus = bus
        # Set by the queue backend: wakes workers for jobs queued in a transaction (for the SQL
        # queue a NOTIFY inside it, delivered at commit, and a local wake-up after commit; for
        # BullMQ the jobs are added to Redis once the transaction commits).
        self.on_enqueued: EnqueueHook | None = None

    async def enqueued(self, tx: Tx, jobs: Sequence[Job]) -> None:
        if self.on_enqueued is not None and jobs:
            await self.on_enqueued(tx, jobs)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        async with self.db.begin() as conn:
            tx = Tx(conn)
            yield tx
        for callback in tx.after_commit:
            callback()
        for action in tx.after_commit_async:
            await action()
        if tx.events and self.bus is not None:
            await self.bus.publish(tx.events)


async def insert_events(tx: Tx, rows: Sequence[dict[str, Any]]) -> list[Event]:
    """Append event rows; returns them with their global ids (and queues them for the bus)."""
    if not rows:
        return []
    # RETURNING without sort_by_parameter_order: SQLite can then insert all rows in one
    # statement (with it, SQLAlchemy falls back to one INSERT per row). Ids are matched back
    # through the owner and seq, unique per job (and per execution).
    stmt = insert(job_events).returning(
        job_events.c.id, job_events.c.job_id, job_events.c.execution_id, job_events.c.seq
    )
    ids = {(r.job_id, r.execution_id, r.seq): r.id for r in await tx.conn.execute(stmt, list(rows))}
    events = [
        event_from_row({"id": ids[(row["job_id"], row["execution_id"], row["seq"])], **row})
        for row in rows
    ]
    tx.events.extend(events)
    return events


async def transition_jobs(
    tx: Tx,
    *,
    where: Iterable[ColumnElement[bool]],
    expected: Collection[JobStatus],
    to: JobStatus,
    now: datetime,
    actor: str,
    event_type: EventType,
    event_payload: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
    close_steps: str | None = None,
) -> list[Job]:
    """Move every job matching ``where`` whose status is in ``expected`` to ``to``.

    The status check, the version bump and the event's ``seq`` are one ``UPDATE ... RETURNING``
    (a compare-and-set: a row whose status changed meanwhile simply does not match); the event
    rows are inserted in the same transaction. Returns the jobs that moved.

    ``close_steps`` (a reason) also fails the job's still-running steps, for a job leaving
    ``running`` without its worker (cancelled, lease expired, released). Their ``step.failed``
    events come before the job's event, so a stream that ends at the job's terminal event has
    seen them.
    """
    increment: Any = 1
    if close_steps is not None:
        increment = 1 + (
            select(func.count())
            .where(
                job_steps.c.job_id == runner_jobs.c.id,
                job_steps.c.status == StepStatus.RUNNING.value,
            )
            .scalar_subquery()
        )
    stmt = (
        update(runner_jobs)
        .where(*where, runner_jobs.c.status.in_([s.value for s in expected]))
        .values(
            status=to.value,
            version=runner_jobs.c.version + 1,
            last_event_seq=runner_jobs.c.last_event_seq + increment,
            updated_at=now,
            **(values or {}),
        )
        .returning(*runner_jobs.c)
    )
    moved = [job_from_row(r) for r in (await tx.conn.execute(stmt)).mappings()]
    rows: list[dict[str, Any]] = []
    if close_steps is not None and moved:
        rows += await _fail_open_steps(tx, moved, close_steps, now, actor)
    base = dict(event_payload or {})
    rows += [
        event_row(
            job.id,
            job.last_event_seq,
            event_type,
            actor,
            {"status": to.value, "attempt": job.attempt, **base},
            now,
            workspace_id=job.workspace_id,
        )
        for job in moved
    ]
    await insert_events(tx, rows)
    return moved


async def _fail_open_steps(
    tx: Tx, jobs: list[Job], reason: str, now: datetime, actor: str
) -> list[dict[str, Any]]:
    """Fail the running steps of ``jobs``; returns their ``step.failed`` event rows, numbered
    just below each job's new ``last_event_seq``."""
    by_id = {job.id: job for job in jobs}
    open_steps = (
        (
            await tx.conn.execute(
                update(job_steps)
                .where(
                    job_steps.c.job_id.in_(list(by_id)),
                    job_steps.c.status == StepStatus.RUNNING.value,
                )
                .values(status=StepStatus.FAILED.value, error=reason, completed_at=now)
                .returning(
                    job_steps.c.id,
                    job_steps.c.job_id,
                    job_steps.c.ordinal,
                    job_steps.c.name,
                    job_steps.c.started_at,
                )
            )
        )
        .mappings()
        .all()
    )
    per_job: dict[UUID, list[Any]] = {}
    for step in sorted(open_steps, key=lambda r: (r["job_id"], r["ordinal"])):
        per_job.setdefault(step["job_id"], []).append(step)
    rows = []
    for job_id, steps in per_job.items():
        job = by_id[job_id]
        first = job.last_event_seq - len(steps)
        for i, open_step in enumerate(steps):
            started = open_step["started_at"]
            rows.append(
                event_row(
                    job_id,
                    first + i,
                    EventType.STEP_FAILED,
                    actor,
                    {
                        "step_id": str(open_step["id"]),
                        "ordinal": open_step["ordinal"],
                        "name": open_step["name"],
                        "duration_s": (now - started).total_seconds() if started else None,
                        "error": reason,
                    },
                    now,
                    workspace_id=job.workspace_id,
                    step_id=open_step["id"],
                )
            )
    return rows
