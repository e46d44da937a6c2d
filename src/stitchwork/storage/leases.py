"""Worker-side job transitions: lease renewal, completion, failure, release and the sweep.

Every method is a compare-and-set on ``status = 'running' AND lease_owner = <worker>``: a worker
that lost its job (cancelled, or its lease expired and another worker took it) gets nothing
back and must drop its result. That is what makes a job never complete twice.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from sqlalchemy import BindParameter, bindparam, case, func, null, select, update

from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.storage.processes import live_group_of
from stitchwork.storage.rows import EventWriter, event_row, insert_events, transition_jobs
from stitchwork.storage.tables import runner_jobs
from stitchwork.storage.types import json_type

if TYPE_CHECKING:
    from stitchwork.clock import Clock
    from stitchwork.storage.db import Database

RUNNING = frozenset({JobStatus.RUNNING})
# Extra attempts a job that began landing gets after its last one, to find out how it ended.
RECOVERY_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: list[Job]
    failed: list[Job]


class LeaseOperations:
    writer: EventWriter
    db: Database
    clock: Clock

    def _held(self, job_id: UUID, worker_id: str) -> list[Any]:
        return [runner_jobs.c.id == job_id, runner_jobs.c.lease_owner == worker_id]

    async def renew_leases(
        self, worker_id: str, job_ids: Collection[UUID], lease: timedelta
    ) -> set[UUID]:
        """Extend the leases this worker still holds; returns those ids. A missing id means
        the job was cancelled or taken over, and its handler must stop."""
        if not job_ids:
            return set()
        stmt = (
            update(runner_jobs)
            .where(
                runner_jobs.c.id.in_(list(job_ids)),
                runner_jobs.c.lease_owner == worker_id,
                runner_jobs.c.status == JobStatus.RUNNING.value,
            )
            .values(lease_expires_at=self.clock.now() + lease)
            .returning(runner_jobs.c.id)
        )
        async with self.writer.write() as tx:
            return set((await tx.conn.execute(stmt)).scalars())

    async def report_progress(self, job_id: UUID, worker_id: str, percent: int) -> bool:
        """Record progress (0-100) and a ``job.progress`` event; False if the job was lost."""
        now = self.clock.now()
        stmt = (
            update(runner_jobs)
            .where(*self._held(job_id, worker_id), runner_jobs.c.status == JobStatus.RUNNING.value)
            .values(
                progress_percent=percent,
                last_event_seq=runner_jobs.c.last_event_seq + 1,
                updated_at=now,
            )
            .returning(
                runner_jobs.c.last_event_seq, runner_jobs.c.attempt, runner_jobs.c.workspace_id
            )
        )
        async with self.writer.write() as tx:
            row = (await tx.conn.execute(stmt)).first()
            if row is None:
                return False
            payload = {"progress_percent": percent, "attempt": row.attempt}
            await insert_events(
                tx,
                [
                    event_row(
                        job_id,
                        row.last_event_seq,
                        EventType.JOB_PROGRESS,
                        worker_id,
                        payload,
                        now,
                        workspace_id=row.workspace_id,
                    )
                ],
            )
        return True

    async def mark_landing(self, job_id: UUID, worker_id: str, landing: bool) -> bool:
        """Mark that the job is about to move its target branch (``landing``), or that it
        found for sure that its change did not land (not ``landing``); False if the job is no
        longer this worker's. While marked, the job cannot be cancelled, and a crash re-queues
        it for a recovery attempt instead of failing it (see ``expire_leases``)."""
        now = self.clock.now()
        value = func.coalesce(runner_jobs.c.landing_at, now) if landing else None
        stmt = (
            update(runner_jobs)
            .where(*self._held(job_id, worker_id), runner_jobs.c.status == JobStatus.RUNNING.value)
            .values(landing_at=value, updated_at=now)
            .returning(runner_jobs.c.id)
        )
        async with self.writer.write() as tx:
            return (await tx.conn.execute(stmt)).first() is not None

    async def complete_jobs(
        self, worker_id: str, results: Mapping[UUID, dict[str, Any] | None]
    ) -> list[Job]:
        """Complete many jobs in one transaction (the worker's group commit).

        Returns the jobs that completed; an id missing from the answer was no longer this
        worker's (cancelled or taken over) and its result is dropped.
        """
        if not results:
            return []
        now = self.clock.now()
        distinct = {json.dumps(r, sort_keys=True) for r in results.values()}
        result: Any
        if len(distinct) == 1:
            only = next(iter(results.values()))
            result = only if only is not None else null()
        else:
            result = case(
                *[(runner_jobs.c.id == job_id, _json_param(r)) for job_id, r in results.items()],
                else_=null(),
            )
        async with self.writer.write() as tx:
            return await transition_jobs(
                tx,
                where=[
                    runner_jobs.c.id.in_(list(results)),
                    runner_jobs.c.lease_owner == worker_id,
                ],
                expected=RUNNING,
                to=JobStatus.COMPLETED,
                now=now,
                actor=worker_id,
                event_type=EventType.JOB_COMPLETED,
                values={
                    "result": result,
                    "error": None,
                    "progress_percent": 100,
                    "completed_at": now,
                    "lease_owner": None,
                    "lease_expires_at": None,
                },
            )

    async def complete_job(
        self, job_id: UUID, worker_id: str, result: dict[str, Any] | None
    ) -> Job | None:
        done = await self.complete_jobs(worker_id, {job_id: result})
        return done[0] if done else None

    async def fail_job(
        self,
        job_id: UUID,
        worker_id: str,
        *,
        error: str,
        result: dict[str, Any] | None,
        retry_after: timedelta | None,
    ) -> Job | None:
        """Record a failed attempt: back to the queue after ``retry_after`` (``job.retried``,
        attempt + 1) or, when ``retry_after`` is None, terminally ``failed`` (``job.failed``)."""
        now = self.clock.now()
        async with self.writer.write() as tx:
            if retry_after is not None:
                moved = await transition_jobs(
                    tx,
                    where=self._held(job_id, worker_id),
                    expected=RUNNING,
                    to=JobStatus.QUEUED,
                    now=now,
                    actor=worker_id,
                    event_type=EventType.JOB_RETRIED,
                    close_steps="the attempt ended before this step did",
                    event_payload={
                        "reason": "failed",
                        "error": error,
                        "delay_s": round(retry_after.total_seconds(), 3),
                    },
                    values={
                        "attempt": runner_jobs.c.attempt + 1,
                        "error": error,
                        "result": result,
                        "progress_percent": 0,
                        "queued_at": now,
                        "run_after": now + retry_after,
                        "lease_owner": None,
                        "lease_expires_at": None,
                    },
                )
                await self.writer.enqueued(tx, moved)
            else:
                moved = await transition_jobs(
                    tx,
                    where=self._held(job_id, worker_id),
                    expected=RUNNING,
                    to=JobStatus.FAILED,
                    now=now,
                    actor=worker_id,
                    event_type=EventType.JOB_FAILED,
                    event_payload={"error": error},
                    close_steps="the attempt ended before this step did",
                    values={
                        "error": error,
                        "result": result,
                        "completed_at": now,
                        "lease_owner": None,
                        "lease_expires_at": None,
                    },
                )
        return moved[0] if moved else None

    async def release_jobs(
        self, worker_id: str, job_ids: Collection[UUID], *, reason: str = "shutdown"
    ) -> list[Job]:
        """Give running jobs back to the queue unchanged (same attempt): used by a worker that
        shuts down before its handlers finished. Emits ``job.requeued``."""
        if not job_ids:
            return []
        now = self.clock.now()
        async with self.writer.write() as tx:
            released = await transition_jobs(
                tx,
                where=[
                    runner_jobs.c.id.in_(list(job_ids)),
                    runner_jobs.c.lease_owner == worker_id,
                ],
                expected=RUNNING,
                to=JobStatus.QUEUED,
                now=now,
                actor=worker_id,
                event_type=EventType.JOB_REQUEUED,
                event_payload={"reason": reason, "previous_owner": worker_id},
                close_steps=f"the worker released the job ({reason})",
                values={
                    "queued_at": now,
                    "run_after": now,
                    "progress_percent": 0,
                    "lease_owner": None,
                    "lease_expires_at": None,
                },
            )
            await self.writer.enqueued(tx, released)
        return released

    async def expire_leases(
        self, *, actor: str, limit: int = 500, host_grace: timedelta | None = None
    ) -> SweepResult:
        """Re-queue running jobs whose lease expired (their worker is gone) with attempt + 1,
        or fail them when no attempt is left. Safe to run from many processes at once.

        With ``host_grace``, a job that still has a recorded process group on a host seen
        within that time is left alone: the group may still be writing, and that host's
        janitor kills it (see ``runtime/janitor.py``); the job is swept once it is gone.

        A job that began landing (``landing_at``) and has no attempt left is re-queued anyway,
        up to ``RECOVERY_ATTEMPTS`` more times: only its next attempt can read off the target
        branch whether the change landed, so failing it here could contradict the target.
        """
        now = self.clock.now()
        conditions = [
            runner_jobs.c.status == JobStatus.RUNNING.value,
            runner_jobs.c.lease_expires_at < now,
        ]
        if host_grace is not None:
            conditions.append(~live_group_of(runner_jobs.c.id, seen_after=now - host_grace))
        candidates = (
            select(
                runner_jobs.c.id,
                runner_jobs.c.lease_owner,
                runner_jobs.c.attempt,
                runner_jobs.c.max_attempts,
                runner_jobs.c.landing_at,
            )
            .where(*conditions)
            .order_by(runner_jobs.c.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        requeued: list[Job] = []
        failed: list[Job] = []
        async with self.writer.write() as tx:
            rows = (await tx.conn.execute(candidates)).all()
            for row in rows:
                # The lease check is repeated in the UPDATE: a heartbeat that renewed the lease
                # after the SELECT wins, and the job is left alone.
                where = [
                    runner_jobs.c.id == row.id,
                    runner_jobs.c.lease_owner == row.lease_owner,
                    runner_jobs.c.lease_expires_at < now,
                ]
                payload = {"reason": "lease_expired", "previous_owner": row.lease_owner}
                recovering = (
                    row.landing_at is not None
                    and row.attempt < row.max_attempts + RECOVERY_ATTEMPTS
                )
                if recovering and row.attempt >= row.max_attempts:
                    payload["recovery"] = "the attempt had begun landing its change"
                if row.attempt < row.max_attempts or recovering:
                    requeued += await transition_jobs(
                        tx,
                        where=where,
                        expected=RUNNING,
                        to=JobStatus.QUEUED,
                        now=now,
                        actor=actor,
                        event_type=EventType.JOB_REQUEUED,
                        event_payload=payload,
                        close_steps="the worker stopped responding (lease expired)",
                        values={
                            "attempt": runner_jobs.c.attempt + 1,
                            "queued_at": now,
                            "run_after": now,
                            "progress_percent": 0,
                            "lease_owner": None,
                            "lease_expires_at": None,
                        },
                    )
                else:
                    error = (
                        f"worker {row.lease_owner} stopped responding (lease expired) "
                        f"on attempt {row.attempt} of {row.max_attempts}"
                    )
                    if row.landing_at is not None:
                        error += (
                            f" and in {RECOVERY_ATTEMPTS} recovery attempts: it had begun "
                            "landing, so check its target branch for its Stitchwork-Job trailer"
                        )
                    failed += await transition_jobs(
                        tx,
                        where=where,
                        expected=RUNNING,
                        to=JobStatus.FAILED,
                        now=now,
                        actor=actor,
                        event_type=EventType.JOB_FAILED,
                        event_payload={**payload, "error": error},
                        close_steps="the worker stopped responding (lease expired)",
                        values={
                            "error": error,
                            "completed_at": now,
                            "lease_owner": None,
                            "lease_expires_at": None,
                        },
                    )
            await self.writer.enqueued(tx, requeued)
        return SweepResult(requeued=requeued, failed=failed)


def _json_param(value: dict[str, Any] | None) -> Any:
    if value is None:
        return null()
    param: BindParameter[Any] = bindparam(None, value, type_=json_type())
    return param
