"""Row <-> domain mapping and the guarded transition every job status change goes through."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.domain.events import Event, EventType
from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.storage.tables import job_events, runner_jobs


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
    )


def event_row(
    job_id: UUID,
    seq: int,
    type_: EventType,
    actor: str,
    payload: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "execution_id": None,
        "step_id": None,
        "seq": seq,
        "type": type_.value,
        "actor": actor,
        "payload": payload,
        "created_at": now,
    }


async def insert_events(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(job_events), list(rows))


async def transition_jobs(
    conn: AsyncConnection,
    *,
    where: Iterable[ColumnElement[bool]],
    expected: Collection[JobStatus],
    to: JobStatus,
    now: datetime,
    actor: str,
    event_type: EventType,
    event_payload: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> list[Job]:
    """Move every job matching ``where`` whose status is in ``expected`` to ``to``.

    The status check, the version bump and the event's ``seq`` are one ``UPDATE ... RETURNING``
    (a compare-and-set: a row whose status changed meanwhile simply does not match); the event
    rows are inserted in the same transaction. Returns the jobs that moved.
    """
    stmt = (
        update(runner_jobs)
        .where(*where, runner_jobs.c.status.in_([s.value for s in expected]))
        .values(
            status=to.value,
            version=runner_jobs.c.version + 1,
            last_event_seq=runner_jobs.c.last_event_seq + 1,
            updated_at=now,
            **(values or {}),
        )
        .returning(*runner_jobs.c)
    )
    moved = [job_from_row(r) for r in (await conn.execute(stmt)).mappings()]
    base = dict(event_payload or {})
    await insert_events(
        conn,
        [
            event_row(
                job.id,
                job.last_event_seq,
                event_type,
                actor,
                {"status": to.value, "attempt": job.attempt, **base},
                now,
            )
            for job in moved
        ],
    )
    return moved
