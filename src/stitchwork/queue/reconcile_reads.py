"""The database reads behind a broker reconciliation (``BullMQQueue.reconcile``): which jobs
are queued, how many per queue, and which queues are paused."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import func, select

from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.storage.db import Database
from stitchwork.storage.rows import job_from_row
from stitchwork.storage.tables import queue_states, runner_jobs

PAGE = 2000


async def queued_counts(db: Database, cutoff: datetime) -> dict[str, int]:
    """Jobs queued at or before ``cutoff``, per queue."""
    stmt = (
        select(runner_jobs.c.queue_name, func.count())
        .where(runner_jobs.c.status == JobStatus.QUEUED.value, runner_jobs.c.queued_at <= cutoff)
        .group_by(runner_jobs.c.queue_name)
    )
    async with db.read() as conn:
        return {row[0]: int(row[1]) for row in (await conn.execute(stmt)).all()}


async def queued_page(db: Database, after: UUID | None, cutoff: datetime) -> list[tuple[UUID, str]]:
    """The next ``PAGE`` (id, queue) of jobs queued at or before ``cutoff``, by id."""
    stmt = (
        select(runner_jobs.c.id, runner_jobs.c.queue_name)
        .where(runner_jobs.c.status == JobStatus.QUEUED.value, runner_jobs.c.queued_at <= cutoff)
        .order_by(runner_jobs.c.id)
        .limit(PAGE)
    )
    if after is not None:
        stmt = stmt.where(runner_jobs.c.id > after)
    async with db.read() as conn:
        return [(row[0], row[1]) for row in (await conn.execute(stmt)).all()]


async def still_queued(db: Database, job_ids: list[UUID]) -> list[Job]:
    """Those of ``job_ids`` that are queued now (read again: they may have run meanwhile)."""
    if not job_ids:
        return []
    stmt = select(runner_jobs).where(
        runner_jobs.c.id.in_(job_ids), runner_jobs.c.status == JobStatus.QUEUED.value
    )
    async with db.read() as conn:
        return [job_from_row(r) for r in (await conn.execute(stmt)).mappings()]


async def pause_states(db: Database) -> dict[str, bool]:
    async with db.read() as conn:
        rows = (await conn.execute(select(queue_states.c.name, queue_states.c.paused))).all()
    return {name: bool(paused) for name, paused in rows}
