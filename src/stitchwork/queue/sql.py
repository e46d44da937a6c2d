"""The embedded queue: the ``runner_jobs`` table itself.

Reservation is one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``: many jobs per
round trip, with ``FOR UPDATE SKIP LOCKED`` on Postgres so concurrent workers never wait for
each other or take the same row. SQLite serialises writers, which gives the same guarantee.
Idle workers in this process are woken by an in-process event; on Postgres, workers in other
processes are woken by ``LISTEN/NOTIFY`` (which also carries cancellations).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from stitchwork.clock import Clock
from stitchwork.config import Settings
from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.queue.base import CancelListener, Drift, QueueInfo
from stitchwork.storage.db import Database
from stitchwork.storage.rows import EventWriter, Tx, transition_jobs
from stitchwork.storage.tables import queue_states, runner_jobs

log = structlog.get_logger(__name__)

WAKE_CHANNEL = "stitchwork_wake"
CANCEL_CHANNEL = "stitchwork_cancel"


class SqlQueue:
    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        writer.on_enqueued = self.enqueued_in
        self.db: Database = writer.db
        self.clock: Clock = writer.clock
        self._wake = asyncio.Event()
        self._cancel_listeners: list[CancelListener] = []
        self._listener: Any = None  # asyncpg connection holding LISTEN

    async def start(self) -> None:
        if self.db.is_postgres and self._listener is None:
            import asyncpg  # type: ignore[import-untyped]  # the postgres extra, no stubs

            url = make_url(self.db.url).set(drivername="postgresql")
            self._listener = await asyncpg.connect(url.render_as_string(hide_password=False))
            await self._listener.add_listener(WAKE_CHANNEL, self._on_wake)
            await self._listener.add_listener(CANCEL_CHANNEL, self._on_cancel)

    async def close(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await listener.close()

    # -- notifications -----------------------------------------------------------------------

    def _on_wake(self, *_args: Any) -> None:
        self._wake.set()

    def _on_cancel(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._fire_cancel(UUID(payload))

    def _fire_cancels(self, job_ids: Collection[UUID]) -> None:
        for job_id in job_ids:
            self._fire_cancel(job_id)

    def _fire_cancel(self, job_id: UUID) -> None:
        for listener in list(self._cancel_listeners):
            try:
                listener(job_id)
            except Exception:
                log.exception("cancel_listener_failed", job_id=str(job_id))

    async def enqueued_in(self, tx: Tx, jobs: Sequence[Job]) -> None:
        """Wake workers for jobs queued in ``tx``: the NOTIFY rides in the transaction (Postgres
        delivers it at commit, so no extra round trip), the local wake-up follows the commit."""
        await self._wake_in(tx)

    async def _wake_in(self, tx: Tx) -> None:
        if self.db.is_postgres:
            await tx.conn.execute(text("SELECT pg_notify(:c, '')"), {"c": WAKE_CHANNEL})
        tx.after_commit.append(self._wake.set)

    async def cancelled_in(self, tx: Tx, job_ids: Collection[UUID]) -> None:
        """Tell workers that jobs cancelled in ``tx`` must stop: NOTIFY in the transaction
        (delivered at commit), local listeners after the commit."""
        ids = list(job_ids)
        if self.db.is_postgres:
            for job_id in ids:
                await tx.conn.execute(
                    text("SELECT pg_notify(:c, :p)"), {"c": CANCEL_CHANNEL, "p": str(job_id)}
                )
            if self._listener is not None:
                return  # our own LISTEN delivers it to local listeners too
        tx.after_commit.append(lambda: self._fire_cancels(ids))

    async def notify_cancelled(self, job_ids: Collection[UUID]) -> None:
        if self.db.is_postgres:
            async with self.db.begin() as conn:
                for job_id in job_ids:
                    await conn.execute(
                        text("SELECT pg_notify(:c, :p)"), {"c": CANCEL_CHANNEL, "p": str(job_id)}
                    )
            if self._listener is not None:
                return  # our own LISTEN delivers it to local listeners too
        self._fire_cancels(job_ids)

    def add_cancel_listener(self, listener: CancelListener) -> None:
        self._cancel_listeners.append(listener)

    def remove_cancel_listener(self, listener: CancelListener) -> None:
        with contextlib.suppress(ValueError):
            self._cancel_listeners.remove(listener)

    async def wait_for_work(
        self, timeout: timedelta, *, queues: Collection[str] | None = None
    ) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the event is set, and a worker shutting down would never stop its waker.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout.total_seconds()):
                await self._wake.wait()
        self._wake.clear()

    # -- reservation -------------------------------------------------------------------------

    async def reserve(
        self, worker_id: str, limit: int, lease: timedelta, *, queues: Collection[str] | None = None
    ) -> list[Job]:
        if limit <= 0:
            return []
        now = self.clock.now()
        paused = select(queue_states.c.name).where(queue_states.c.paused.is_(True))
        due = (
            select(runner_jobs.c.id)
            .where(
                runner_jobs.c.status == JobStatus.QUEUED.value,
                runner_jobs.c.run_after <= now,
                runner_jobs.c.queue_name.not_in(paused),
            )
            .order_by(runner_jobs.c.priority.desc(), runner_jobs.c.run_after, runner_jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if queues is not None:
            due = due.where(runner_jobs.c.queue_name.in_(list(queues)))
        # A MATERIALIZED CTE, not ``id IN (subquery)``: Postgres may run that subquery as the
        # inner side of a nested loop, re-executing it per row; each re-run skips the rows this
        # statement already locked and returns the next ones, so LIMIT was not honoured.
        due_cte = due.cte("due").prefix_with("MATERIALIZED")
        jobs = await self._start([runner_jobs.c.id == due_cte.c.id], worker_id, lease, now)
        jobs.sort(key=lambda j: (-j.priority, j.run_after or now, j.id))
        return jobs

    async def _start(
        self, where: list[Any], worker_id: str, lease: timedelta, now: datetime
    ) -> list[Job]:
        """Move the queued jobs matching ``where`` to running, leased to ``worker_id``."""
        async with self.writer.write() as tx:
            return await transition_jobs(
                tx,
                where=where,
                expected={JobStatus.QUEUED},
                to=JobStatus.RUNNING,
                now=now,
                actor=worker_id,
                event_type=EventType.JOB_STARTED,
                event_payload={"worker": worker_id},
                values={
                    "lease_owner": worker_id,
                    "lease_expires_at": now + lease,
                    "started_at": now,
                    "progress_percent": 0,
                },
            )

    # -- the table is the queue ---------------------------------------------------------------

    def settle(self, job_ids: Collection[UUID]) -> None:
        """Nothing to acknowledge: the job row is the delivery, and its status (written by the
        worker's transition) already says how it ended."""
        del job_ids

    async def reconcile(self) -> Drift:
        """No drift is possible: the database is the queue. Counts what is queued."""
        async with self.db.read() as conn:
            queued = await conn.scalar(
                select(func.count()).where(runner_jobs.c.status == JobStatus.QUEUED.value)
            )
        return Drift(queued=int(queued or 0))

    async def status(self) -> dict[str, Any]:
        return {"backend": "sql", "ok": True}

    # -- pause / resume ----------------------------------------------------------------------

    async def _set_paused(self, name: str, paused: bool) -> None:
        now = self.clock.now()
        insert = pg_insert if self.db.is_postgres else sqlite_insert
        stmt = insert(queue_states).values(name=name, paused=paused, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[queue_states.c.name], set_={"paused": paused, "updated_at": now}
        )
        async with self.writer.write() as tx:
            await tx.conn.execute(stmt)  # an upsert: two processes pausing at once both succeed
            if not paused:
                await self._wake_in(tx)

    async def pause(self, name: str) -> None:
        await self._set_paused(name, True)

    async def resume(self, name: str) -> None:
        await self._set_paused(name, False)

    async def list_queues(self, workspace_id: UUID | None = None) -> list[QueueInfo]:
        counts = (
            select(runner_jobs.c.queue_name, runner_jobs.c.status, func.count())
            .where(runner_jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .group_by(runner_jobs.c.queue_name, runner_jobs.c.status)
        )
        if workspace_id is not None:
            counts = counts.where(runner_jobs.c.workspace_id == workspace_id)
        async with self.db.read() as conn:
            states = dict(
                (await conn.execute(select(queue_states.c.name, queue_states.c.paused))).all()
            )
            rows = (await conn.execute(counts)).all()
        by_queue: dict[str, dict[str, int]] = {name: {} for name in states}
        for name, status, n in rows:
            by_queue.setdefault(name, {})[status] = n
        by_queue.setdefault("default", {})
        return [
            QueueInfo(
                name=name,
                paused=bool(states.get(name, False)),
                queued=c.get(JobStatus.QUEUED.value, 0),
                running=c.get(JobStatus.RUNNING.value, 0),
            )
            for name, c in sorted(by_queue.items())
        ]


def create_queue(settings: Settings, writer: EventWriter) -> SqlQueue:
    """Build the queue backend ``settings.queue_url`` names: ``sql://`` (this table) or
    ``redis://`` / ``rediss://`` (BullMQ queues on Redis)."""
    from stitchwork.errors import ConfigError

    url = settings.queue_url
    if url.rstrip("/") in {"sql:", "sql:/"}:
        return SqlQueue(writer)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from stitchwork.queue.bullmq import BullMQQueue

        return BullMQQueue(
            writer,
            url,
            prefix=settings.bullmq_prefix,
            queue_prefix=settings.bullmq_queue_prefix,
            lease=settings.lease,
            renew_interval=settings.heartbeat_interval,
            stalled_interval=settings.sweep_interval,
            reconcile_interval=settings.reconcile_interval,
            queue_names=settings.queue_routes.values(),
        )
    raise ConfigError(
        f"unsupported queue_url {url!r}: use sql:// (the job table) or redis://host:port/db "
        "(BullMQ queues on Redis)",
        field="queue_url",
    )
