"""The worker: reserves jobs, runs their handlers with bounded concurrency, keeps their leases
alive, and records how each attempt ended.

Shutdown (SIGTERM/SIGINT or ``stop``): stop reserving, let running handlers finish within
``shutdown_grace``, then stop the rest and release them to the queue (``job.requeued``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import structlog

from stitchwork.config import Settings
from stitchwork.domain.jobs import Job
from stitchwork.domain.retry import RetryPolicy, should_retry
from stitchwork.domain.steps import StepStatus, StepType
from stitchwork.queue.base import QueueBackend
from stitchwork.runner.process import group_recorder, output_filter
from stitchwork.runtime.context import Handler, JobContext, JobFailed
from stitchwork.runtime.janitor import JobGroups, ThisProcess
from stitchwork.runtime.metrics import Metrics
from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.processes import SqlProcessStore
from stitchwork.storage.steps import JobLost, SqlStepStore

log = structlog.get_logger(__name__)

RESERVE_ERROR_BACKOFF_S = 0.5
RESERVE_BACKOFF_MAX_S = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"


@dataclass
class _Running:
    job: Job
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    handler_done: bool = False
    killer: asyncio.Task[None] | None = field(default=None, repr=False)


def _unstorable(result: object) -> str | None:
    """Why ``result`` cannot be stored as a JSON column on every backend, or None if it can."""
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"a result that is not JSON ({exc})"
    if _has_nul(result):
        return "a result containing NUL characters, which Postgres cannot store"
    return None


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class _Completer:
    """Group commit: completions that arrive while a flush is in flight go out together in
    the next transaction. Adds no delay when idle; turns N commits into one under load."""

    def __init__(self, store: SqlJobStore, worker_id: str) -> None:
        self._store = store
        self._worker_id = worker_id
        self._pending: dict[UUID, tuple[dict[str, Any] | None, asyncio.Future[bool]]] = {}
        self._wake = asyncio.Event()

    async def complete(self, job_id: UUID, result: dict[str, Any] | None) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = (result, future)
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            try:
                done = await self._store.complete_jobs(
                    self._worker_id, {job_id: r for job_id, (r, _) in batch.items()}
                )
            except asyncio.CancelledError:
                for _, future in batch.values():
                    future.cancel()
                raise
            except Exception as exc:
                log.exception("complete_failed", count=len(batch))
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            completed = {j.id for j in done}
            for job_id, (_, future) in batch.items():
                if not future.done():
                    future.set_result(job_id in completed)


class Worker:
    def __init__(
        self,
        *,
        store: SqlJobStore,
        steps: SqlStepStore,
        queue: QueueBackend,
        handlers: Mapping[str, Handler],
        settings: Settings,
        concurrency: int | None = None,
        worker_id: str | None = None,
        queues: list[str] | None = None,
        rng: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        processes: SqlProcessStore | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.steps = steps
        self.queue = queue
        self.handlers = dict(handlers)
        self.settings = settings
        self.concurrency = concurrency or settings.worker_concurrency
        self.worker_id = worker_id or new_worker_id()
        self.queues = queues
        self.retry_policy = RetryPolicy(
            base=settings.backoff_base, maximum=settings.backoff_max, jitter=settings.backoff_jitter
        )
        self._rng = rng
        self.metrics = metrics
        self._running: dict[UUID, _Running] = {}
        self._busy = 0  # jobs whose handler is still running (at most ``concurrency``)
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._completer = _Completer(store, self.worker_id)
        self.log = log.bind(worker_id=self.worker_id)
        # Every process group a handler starts is recorded here (``runtime/janitor.py``).
        self.processes = processes
        self._me = ThisProcess.current() if processes is not None else None
        self.redact = redact  # applied to every command's output before it is recorded
        # When each running job's lease was last renewed (monotonic): a worker that cannot
        # renew stops its jobs before their leases run out (it fences itself).
        self._renewed: dict[UUID, float] = {}

    def _handler_done(self, running: _Running) -> None:
        if not running.handler_done:
            running.handler_done = True
            self._busy -= 1
            self._kick.set()

    @property
    def running_job_ids(self) -> set[UUID]:
        return set(self._running)

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (what SIGTERM does)."""
        self._stop.set()
        self._kick.set()

    async def run(self) -> None:
        self.queue.add_cancel_listener(self.request_stop)
        helpers = [
            asyncio.create_task(self._completer.run(), name="completer"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._waker(), name="waker"),
        ]
        self.log.info("worker_started", concurrency=self.concurrency, queues=self.queues)
        try:
            await self._reserve_loop()
            await self._drain()
        finally:
            self.queue.remove_cancel_listener(self.request_stop)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.log.info("worker_stopped")

    async def _waker(self) -> None:
        while True:
            await self.queue.wait_for_work(self.settings.poll_interval, queues=self.queues)
            self._kick.set()

    async def _reserve_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            # Cleared before reserving, not after: a wake-up that arrives while the reserve
            # query runs must make the loop look again instead of being lost.
            self._kick.clear()
            # Slots are for handlers: a job whose handler returned while its result is being
            # committed (the group commit) no longer holds one, so the next reservation
            # overlaps that commit instead of waiting for it.
            free = self.concurrency - self._busy
            if free > 0:
                try:
                    jobs = await self.queue.reserve(
                        self.worker_id, free, self.settings.lease, queues=self.queues
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The database or the broker is unreachable: back off (up to 10 s) and try
                    # again; the first failure of an outage is logged in full.
                    failures += 1
                    if failures == 1:
                        self.log.exception("reserve_failed")
                    else:
                        self.log.warning("reserve_failed", error=str(exc)[:200], failures=failures)
                    await asyncio.sleep(
                        min(RESERVE_BACKOFF_MAX_S, RESERVE_ERROR_BACKOFF_S * 2 ** (failures - 1))
                    )
                    continue
                if failures:
                    self.log.info("reserve_recovered", after_failures=failures)
                    failures = 0
                for job in jobs:
                    self._start(job)
                if len(jobs) == free:
                    continue  # there may be more due right now
            if not self._stop.is_set():
                await self._kick.wait()

    def _start(self, job: Job) -> None:
        ctx = JobContext(
            job,
            functools.partial(self._progress, job.id),
            steps=self.steps,
            worker_id=self.worker_id,
            on_step_end=self._step_ended if self.metrics is not None else None,
            landing=functools.partial(self.store.mark_landing, job.id, self.worker_id),
        )
        previous = self._running.get(job.id)
        running = _Running(job=job, ctx=ctx)
        self._running[job.id] = running
        self._busy += 1
        running.task = asyncio.create_task(
            self._execute(running, after=previous.task if previous else None),
            name=f"job:{job.id}",
        )

    def _step_ended(self, type_: StepType, status: StepStatus, duration_s: float) -> None:
        assert self.metrics is not None
        self.metrics.step_duration.labels(type_.value, status.value).observe(duration_s)

    async def _progress(self, job_id: UUID, percent: int) -> bool:
        try:
            return await self.store.report_progress(job_id, self.worker_id, percent)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("progress_failed", job_id=str(job_id))
            return False

    async def _execute(self, running: _Running, *, after: asyncio.Task[None] | None) -> None:
        job = running.job
        jlog = self.log.bind(job_id=str(job.id), job_type=job.type, attempt=job.attempt)
        started = time.perf_counter()
        outcome = "lost"
        try:
            if after is not None:
                # The previous attempt of this job (cancelled, then retried at once) may still
                # be stopping here, cleaning up its worktree: this one starts after it.
                await asyncio.wait({after})
            self._renewed[job.id] = time.monotonic()
            if self.redact is not None:
                output_filter.set(self.redact)
            if self.processes is not None and self._me is not None:
                # Set in this job's own task: what the handler starts is recorded as this job's.
                group_recorder.set(
                    JobGroups(
                        self.processes,
                        self._me,
                        self.store.clock,
                        job_id=job.id,
                        attempt=job.attempt,
                        worker_id=self.worker_id,
                    )
                )
            handler = self.handlers.get(job.type)
            if handler is None:
                raise JobFailed(
                    f"this worker has no handler for job type {job.type!r}", retryable=False
                )
            result = await handler(running.ctx)
            self._handler_done(running)
            if running.stopping:
                jlog.info("job_stopped")
                return
            problem = _unstorable(result)
            if problem:
                # Refused here, not by the database: an unstorable result would fail the whole
                # group commit and leave every job in it running until its lease expired.
                raise JobFailed(f"handler returned {problem}", retryable=False)
            try:
                completed = await self._completer.complete(job.id, result)
            except Exception:
                # Not the handler's fault: the lease expires and the sweeper re-queues the job.
                jlog.exception("complete_record_failed")
                return
            outcome = "completed"
            if not completed:
                jlog.warning("result_dropped", reason="job is no longer leased to this worker")
        except asyncio.CancelledError:
            if not running.stopping:
                raise
            jlog.info("job_stopped", forced=True)
        except JobLost:
            # Cancelled or taken over while the handler was writing: nothing of ours to record.
            jlog.info("job_lost")
        except JobFailed as exc:
            error, result = str(exc), exc.result
            problem = _unstorable(result)
            if problem:
                error, result = f"{error} (result dropped: {problem})", None
            outcome = "failed"
            await self._fail(running, error, result, retryable=exc.retryable, jlog=jlog)
        except Exception as exc:
            jlog.exception("handler_crashed")
            outcome = "failed"
            await self._fail(running, f"{type(exc).__name__}: {exc}", None, True, jlog=jlog)
        finally:
            if self.metrics is not None:
                self.metrics.job_duration.labels(job.type, outcome).observe(
                    time.perf_counter() - started
                )
            self._handler_done(running)
            if self._running.get(job.id) is running:  # not yet replaced by a next attempt
                del self._running[job.id]
                self._renewed.pop(job.id, None)
                self.queue.settle((job.id,))
            if running.killer is not None:
                running.killer.cancel()
            self._kick.set()

    async def _fail(
        self,
        running: _Running,
        error: str,
        result: dict[str, Any] | None,
        retryable: bool,
        *,
        jlog: Any,
    ) -> None:
        job = running.job
        if running.stopping:
            return
        retry_after = None
        if retryable and should_retry(job.attempt, job.max_attempts):
            retry_after = self.retry_policy.delay(job.attempt, self._rng())
        try:
            moved = await self.store.fail_job(
                job.id, self.worker_id, error=error, result=result, retry_after=retry_after
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease will expire and the sweeper will requeue the job: nothing is lost.
            jlog.exception("fail_record_failed")
            return
        if moved is None:
            jlog.warning("result_dropped", reason="job is no longer leased to this worker")
        elif retry_after is not None:
            jlog.info("job_retry_scheduled", error=error, delay_s=retry_after.total_seconds())
        else:
            jlog.info("job_failed", error=error)

    def request_stop(self, job_id: UUID) -> None:
        """Stop a running job (it was cancelled, or its lease was lost): ask the handler
        first, cancel its task after ``cancel_grace``. Its outcome is not recorded."""
        running = self._running.get(job_id)
        if running is None or running.stopping:
            return
        running.stopping = True
        running.ctx.stop_requested.set()
        self.log.info("job_stop_requested", job_id=str(job_id))
        running.killer = asyncio.create_task(self._kill_after(running))

    async def _kill_after(self, running: _Running) -> None:
        await asyncio.sleep(self.settings.cancel_grace.total_seconds())
        if running.task is not None and not running.task.done():
            running.task.cancel()

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            ids = {i for i, r in self._running.items() if not r.stopping}
            if not ids:
                continue
            try:
                held = await self.store.renew_leases(self.worker_id, ids, self.settings.lease)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("heartbeat_failed")
                self._fence(ids, interval)
                continue
            if self.metrics is not None:
                self.metrics.heartbeat()
            now = time.monotonic()
            for job_id in held:
                self._renewed[job_id] = now
            for job_id in ids - held:
                if job_id in self._running:  # not finished meanwhile: cancelled or taken over
                    self.request_stop(job_id)

    def _fence(self, ids: set[UUID], interval: float) -> None:
        """Stop the jobs whose lease runs out before the next heartbeat could renew it.

        A worker cut off from the database cannot renew leases, nor refresh its host's row;
        once that row is older than the host grace (twice the lease) the sweeper hands the job
        to another worker, so this attempt's processes must be gone by then.
        """
        deadline = self.settings.lease.total_seconds() - interval
        now = time.monotonic()
        for job_id in ids:
            renewed = self._renewed.get(job_id)
            if renewed is not None and now - renewed >= deadline:
                self.log.warning("lease_unrenewable_job_stopped", job_id=str(job_id))
                self.request_stop(job_id)

    async def _drain(self) -> None:
        """Graceful shutdown: wait for handlers, then stop and release the rest."""
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            grace = self.settings.shutdown_grace.total_seconds()
            self.log.info("worker_draining", running=len(tasks), grace_s=grace)
            await asyncio.wait(tasks, timeout=grace)
        leftover = {job_id: r for job_id, r in self._running.items() if r.task is not None}
        for running in leftover.values():
            running.stopping = True
            running.ctx.stop_requested.set()
            assert running.task is not None
            running.task.cancel()
        if leftover:
            await asyncio.gather(
                *(r.task for r in leftover.values() if r.task), return_exceptions=True
            )
            released = await self.store.release_jobs(self.worker_id, list(leftover))
            self.log.info("jobs_released", count=len(released))
