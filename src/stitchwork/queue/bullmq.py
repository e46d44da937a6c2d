"""BullMQ queues on Redis (``queue_url=redis://host:port/db``), through the ``bullmq`` package.

The database stays the truth; Redis decides delivery. Every job the database queues is added
to a real BullMQ queue once its transaction commits (BullMQ job id = stitchwork job id, so a
second add is a no-op), and Node tools or BullMQ dashboards can inspect it. A worker takes
deliveries with BullMQ's own ``moveToActive`` script (locked with a token for one lease), then
moves them to ``running`` with the same compare-and-set as the SQL queue: a delivery whose
transition the database refuses (the job was cancelled, or is already running elsewhere) is
acknowledged and dropped. Locks are renewed while the job runs; a dead worker's lock expires
and BullMQ's stalled-job check puts the job back in ``wait``, while the lease sweeper re-queues
it in the database: whichever comes first, the job runs again, once.

What Redis may lose (a restart without persistence, a flush, an add that failed after the
commit) the reconciler re-adds from the database. Pause state, queue listings and cancellation
notices come from the SQL queue this class extends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

import structlog

from stitchwork.domain.jobs import MAX_PRIORITY, Job
from stitchwork.errors import ConfigError
from stitchwork.queue import reconcile_reads as reads
from stitchwork.queue.base import Drift
from stitchwork.queue.sql import SqlQueue
from stitchwork.storage.rows import EventWriter, Tx
from stitchwork.storage.tables import runner_jobs

log = structlog.get_logger(__name__)

# BullMQ pops priority 1 first and puts priority 0 ("none") before every prioritised job, so
# every stitchwork priority (-1000..1000, higher first) maps to 1..2001.
STALLED_FOREVER = 1_000_000  # attempts are counted by the database, never by BullMQ
RECONCILE_GRACE = timedelta(seconds=1)
FULL_CHECK_EVERY = 15  # reconciliations: a full id-by-id check at least this often
BACKOFF_MAX_S = 2.0

ACTIVATE_KEYS = ["wait", "active", "prioritized", "events", "stalled", "limiter", "delayed"]
ACTIVATE_KEYS += ["paused", "meta", "pc", "marker"]  # moveToActive's KEYS, in its order

Delivery = tuple[UUID, Any, str]  # job id, bullmq.Job, lock token


def bull_priority(priority: int) -> int:
    return MAX_PRIORITY - priority + 1


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _ms(moment: datetime) -> int:
    return math.floor(moment.timestamp() * 1000)


def _due_ms(moment: datetime) -> int:
    """A due time in whole milliseconds, never before the exact one."""
    return math.ceil(moment.timestamp() * 1000)


class BullMQQueue(SqlQueue):
    def __init__(
        self,
        writer: EventWriter,
        url: str,
        *,
        prefix: str,
        queue_prefix: str,
        lease: timedelta,
        renew_interval: timedelta,
        stalled_interval: timedelta,
        reconcile_interval: timedelta,
        queue_names: Iterable[str] = (),
    ) -> None:
        super().__init__(writer)
        self.url = url
        self.prefix = prefix
        self.queue_prefix = queue_prefix
        self.lease = lease
        self.renew_interval = renew_interval
        self.stalled_interval = stalled_interval
        self.reconcile_interval = reconcile_interval
        self.reconcile_lock_key = f"{prefix}:{queue_prefix}reconcile"
        self.known: set[str] = {"default", *queue_names}
        self._redis: Any = None
        self._blocking: Any = None
        self._queues: dict[str, Any] = {}
        self._held: dict[UUID, Delivery] = {}  # what this process's workers are running
        self._settling: set[UUID] = set()
        self._settle_wake = asyncio.Event()
        self._tokens = itertools.count()
        self._token_prefix = uuid4().hex
        self._next_due_ms: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._run_id: str | None = None
        self._checks = 0
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        self.last_drift: Drift | None = None
        self.last_reconciled_at: datetime | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            import bullmq  # type: ignore[import-untyped]  # the redis extra, no stubs
            import msgpack  # type: ignore[import-untyped]  # bullmq's dependency, no stubs
            import redis.asyncio as aioredis
            from bullmq.scripts import raw2NextJobData  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(
                f"queue_url {redacted(self.url)!r} needs the redis extra: "
                "pip install 'stitchwork[redis]'",
                field="queue_url",
            ) from exc
        self._bullmq, self._msgpack, self._raw2next = bullmq, msgpack, raw2NextJobData
        try:
            self._redis = aioredis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10
            )
            # BZPOPMIN blocks its connection: it gets its own, with no read timeout.
            self._blocking = aioredis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=2
            )
        except ValueError as exc:
            raise ConfigError(f"invalid queue_url: {exc}", field="queue_url") from exc
        await super().start()
        try:
            await self._redis.ping()
            self._ok()
        except Exception as exc:  # keep starting: every loop retries, health reports it
            self._failed(exc)
            log.warning("broker_unreachable", url=redacted(self.url), error=self.last_error)
        self._tasks = [
            asyncio.create_task(self._renew_loop(), name="bullmq-renew"),
            asyncio.create_task(self._stalled_loop(), name="bullmq-stalled"),
            asyncio.create_task(self._settle_loop(), name="bullmq-settle"),
        ]

    async def close(self) -> None:
        # Loops also stop on the flag: a cancellation swallowed inside a Redis call must not
        # leave one running (or close() waiting for it).
        self._closing = True
        self._settle_wake.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._settling:
            with contextlib.suppress(Exception):
                await self._flush_settled()
        for client in (self._blocking, self._redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._redis = self._blocking = None
        await super().close()

    def _ok(self) -> None:
        if not self.connected and self.last_error is not None:
            self.reconnects += 1
            log.info("broker_reconnected", url=redacted(self.url), reconnects=self.reconnects)
        self.connected = True

    def _failed(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("broker_connection_lost", url=redacted(self.url), error=str(exc))
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]

    def _bq(self, name: str) -> Any:
        queue = self._queues.get(name)
        if queue is None:
            self.known.add(name)
            queue = self._bullmq.Queue(
                self.queue_prefix + name, {"connection": self._redis, "prefix": self.prefix}
            )
            self._queues[name] = queue
        return queue

    # -- adding ------------------------------------------------------------------------------

    async def enqueued_in(self, tx: Tx, jobs: Sequence[Job]) -> None:
        snapshot = list(jobs)
        tx.after_commit_async.append(lambda: self._add_quietly(snapshot))

    async def _add_quietly(self, jobs: Sequence[Job]) -> None:
        try:
            await self._add(jobs)
        except Exception as exc:  # the reconciler re-adds what the database says is queued
            self._failed(exc)
            log.warning("broker_add_failed", count=len(jobs), error=self.last_error)

    async def _add(self, jobs: Sequence[Job]) -> None:
        now_ms = _ms(self.clock.now())
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                # This process still holds the job's previous delivery (a retry or release by
                # its own worker): finish that first, or the add would be a no-op.
                held = self._held.pop(job.id, None)
                if held is not None:
                    self._settling.discard(job.id)
                    await _finish_in(pipe, held)
            for job in jobs:
                queue = self._bq(job.queue_name)
                due_ms = _due_ms(job.run_after) if job.run_after is not None else now_ms
                opts: dict[str, Any] = {
                    "jobId": str(job.id),
                    "priority": bull_priority(job.priority),
                    "timestamp": now_ms,
                    "attempts": 1,
                    "removeOnComplete": True,
                    "removeOnFail": True,
                }
                if due_ms > now_ms:
                    opts["delay"] = due_ms - now_ms
                data = {"job_id": str(job.id), "type": job.type, "attempt": job.attempt}
                bull_job = self._bullmq.Job(queue, job.type, data, opts)
                await queue.backend.scripts.addJob(bull_job, pipe)
            await pipe.execute()
        self._ok()

    # -- delivery ----------------------------------------------------------------------------

    async def reserve(
        self, worker_id: str, limit: int, lease: timedelta, *, queues: Collection[str] | None = None
    ) -> list[Job]:
        if limit <= 0:
            return []
        now = self.clock.now()
        delivered: list[Delivery] = []
        try:
            for name in sorted(queues if queues is not None else self.known):
                if len(delivered) < limit:  # one round trip per queue, however many it takes
                    delivered += await self._move_to_active(
                        name, limit - len(delivered), _ms(now), lease
                    )
            self._ok()
        except Exception as exc:
            self._failed(exc)
            await self._finish(delivered)  # their locks would hold them for a whole lease
            raise
        if not delivered:
            return []
        try:
            ids = [d[0] for d in delivered]
            jobs = await self._start([runner_jobs.c.id.in_(ids)], worker_id, lease, now)
        except BaseException:
            await self._finish(delivered)  # the reconciler re-adds them from the database
            raise
        moved = {job.id: job for job in jobs}
        dropped = [d for d in delivered if d[0] not in moved]
        self._held.update((d[0], d) for d in delivered if d[0] in moved)
        if dropped:
            log.info("deliveries_dropped", count=len(dropped), reason="not queued in the database")
            await self._finish(dropped)
        return [moved[d[0]] for d in delivered if d[0] in moved]

    async def _move_to_active(
        self, name: str, count: int, now_ms: int, lease: timedelta
    ) -> list[Delivery]:
        """BullMQ's ``moveToActive`` ``count`` times in one round trip, with this engine's
        clock (so delayed jobs fall due on the same time the database uses)."""
        queue = self._bq(name)
        scripts = queue.backend.scripts
        keys = scripts.getKeys(ACTIVATE_KEYS)
        lock_ms = round(lease.total_seconds() * 1000)
        tokens = [f"{self._token_prefix}:{next(self._tokens)}" for _ in range(count)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for token in tokens:
                opts = self._msgpack.packb(
                    {"token": token, "lockDuration": lock_ms, "limiter": None}, use_bin_type=True
                )
                await scripts.commands["moveToActive"](
                    keys=keys, args=[scripts.keys[""], now_ms, opts], client=pipe
                )
            if count > 1:
                # More may be waiting: leave a marker so other blocked workers look too.
                pipe.zadd(scripts.keys["marker"], {"0": 0})
            raws = await pipe.execute()
        out: list[Delivery] = []
        foreign: list[Delivery] = []
        for token, raw in zip(tokens, raws, strict=False):
            data, job_id, _limited, next_due = self._raw2next(raw)
            if not data:
                if next_due:
                    self._next_due_ms = int(next_due)
                continue
            bull_job = self._bullmq.Job.fromJSON(queue, data, job_id)
            try:
                out.append((UUID(job_id), bull_job, token))
            except ValueError:
                foreign.append((UUID(int=0), bull_job, token))
        if foreign:
            log.warning("foreign_jobs_dropped", queue=name, count=len(foreign))
            await self._finish(foreign)
        return out

    async def wait_for_work(
        self, timeout: timedelta, *, queues: Collection[str] | None = None
    ) -> None:
        """Block on the queues' BullMQ markers (one ``BZPOPMIN`` over all of them)."""
        timeout_s = timeout.total_seconds()
        if self._next_due_ms is not None:
            due_in = (self._next_due_ms - _ms(self.clock.now())) / 1000
            self._next_due_ms = None
            timeout_s = max(0.0, min(timeout_s, due_in))
        if timeout_s <= 0:
            return
        names = sorted(queues if queues is not None else self.known)
        markers = [self._bq(name).backend.scripts.keys["marker"] for name in names]
        try:
            popped = await self._blocking.bzpopmin(markers, timeout=max(timeout_s, 0.01))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            await asyncio.sleep(min(timeout_s, BACKOFF_MAX_S))
            return
        self._ok()
        if popped:
            # A marker scored in the future announces a delayed job: wake when it is due.
            ahead_s = (float(popped[2]) - _ms(self.clock.now())) / 1000
            if ahead_s > 0:
                await asyncio.sleep(min(ahead_s, timeout_s))

    # -- acknowledging -----------------------------------------------------------------------

    def settle(self, job_ids: Collection[UUID]) -> None:
        held = [job_id for job_id in job_ids if job_id in self._held]
        if held:
            self._settling.update(held)
            self._settle_wake.set()

    async def _settle_loop(self) -> None:
        while not self._closing:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            try:
                await self._flush_settled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the locks expire; a redelivery is dropped by the DB
                self._failed(exc)
                log.warning("broker_ack_failed", error=self.last_error)

    async def _flush_settled(self) -> None:
        ids, self._settling = self._settling, set()
        await self._finish([self._held.pop(i) for i in ids if i in self._held])

    async def _finish(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                await _finish_in(pipe, delivery)
            results = await pipe.execute(raise_on_error=False)
        # A negative code means the lock was gone (expired, or the job re-added): nothing held.
        refused = sum(
            1 for r in results if isinstance(r, Exception) or (isinstance(r, int) and r < 0)
        )
        if refused:
            log.debug("acks_refused", count=refused)

    # -- background loops --------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        lock_ms = round(self.lease.total_seconds() * 1000)
        while not self._closing:
            await asyncio.sleep(self.renew_interval.total_seconds())
            by_queue: dict[str, list[Delivery]] = {}
            for delivery in list(self._held.values()):
                by_queue.setdefault(delivery[1].queue.name, []).append(delivery)
            for held in by_queue.values():
                scripts = held[0][1].queue.backend.scripts
                ids, tokens = [str(d[0]) for d in held], [d[2] for d in held]
                try:
                    await scripts.extendJobLocks(ids, tokens, lock_ms)
                    self._ok()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(exc)

    async def _stalled_loop(self) -> None:
        interval_ms = round(self.stalled_interval.total_seconds() * 1000)
        while not self._closing:
            await asyncio.sleep(self.stalled_interval.total_seconds())
            for name in sorted(self.known):
                try:
                    moved = await self._bq(name).backend.moveStalledJobsToWait(
                        STALLED_FOREVER, interval_ms
                    )
                    self._ok()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(exc)
                    break
                if moved:
                    log.warning("stalled_jobs_redelivered", queue=name, count=len(moved))

    # -- pause / resume ----------------------------------------------------------------------

    async def pause(self, name: str) -> None:
        await super().pause(name)
        await self._bq(name).pause()

    async def resume(self, name: str) -> None:
        await super().resume(name)
        await self._bq(name).resume()

    # -- reconciliation ----------------------------------------------------------------------

    async def reconcile(self) -> Drift:
        """Re-add the queued jobs Redis does not hold (all of them after a Redis restart) and
        bring BullMQ's pause state in line with the database's.

        One process checks per interval (a Redis lock), except the first check of each process
        and any check after Redis restarted. Only ids are read; a job found missing is re-read
        and re-added only if it is still queued and not running here (it may have been
        delivered, run and acknowledged between the two reads)."""
        info = await self._redis.info("server")
        run_id = str(info.get("run_id", ""))
        restarted = self._run_id is not None and run_id != self._run_id
        first = self._run_id is None
        if restarted:
            log.warning("broker_restarted", url=redacted(self.url))
        self._run_id = run_id
        self._ok()
        lock_ms = max(1, round(self.reconcile_interval.total_seconds() * 750))
        acquired = await self._redis.set(
            self.reconcile_lock_key, self._token_prefix, nx=True, px=lock_ms
        )
        if not (acquired or first or restarted):
            return Drift()  # another process checked within this interval
        cutoff = self.clock.now() - (timedelta(0) if restarted else RECONCILE_GRACE)
        self._checks += 1
        if not (first or restarted) and self._checks % FULL_CHECK_EVERY:
            # The cheap check: Redis holds at least as many waiting jobs per queue as the
            # database has queued (a full check still runs every FULL_CHECK_EVERY rounds, as
            # stale entries of jobs cancelled while queued could hide a lost one).
            counted = await self._counts_agree(cutoff)
            if counted is not None:
                await self._sync_paused()
                return self._record(Drift(queued=counted))
        queued = missing = 0
        after: UUID | None = None
        while True:
            page = await reads.queued_page(self.db, after, cutoff)
            if not page:
                break
            after = page[-1][0]
            queued += len(page)
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id, name in page:
                    pipe.exists(self._bq(name).toKey(str(job_id)))
                held = await pipe.execute()
            gone = [job_id for (job_id, _), exists in zip(page, held, strict=True) if not exists]
            lost = [
                job for job in await reads.still_queued(self.db, gone) if job.id not in self._held
            ]
            if lost:
                missing += len(lost)
                await self._add(lost)
        await self._sync_paused()
        if missing:
            log.warning("queue_drift_repaired", missing=missing, queued=queued)
        return self._record(Drift(queued=queued, missing=missing))

    def _record(self, drift: Drift) -> Drift:
        self.last_drift, self.last_reconciled_at = drift, self.clock.now()
        return drift

    async def _counts_agree(self, cutoff: datetime) -> int | None:
        """How many jobs are queued, if Redis holds at least that many waiting per queue."""
        in_db = await reads.queued_counts(self.db, cutoff)
        names = sorted(in_db)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                keys = self._bq(name).backend.scripts.keys
                pipe.llen(keys["wait"]).zcard(keys["prioritized"])
                pipe.zcard(keys["delayed"]).llen(keys["paused"])
            sizes = await pipe.execute()
        for i, name in enumerate(names):
            if sum(sizes[4 * i : 4 * i + 4]) < in_db[name]:
                return None
        return sum(in_db.values())

    async def _sync_paused(self) -> None:
        for name, paused in (await reads.pause_states(self.db)).items():
            queue = self._bq(name)
            if paused != bool(await queue.isPaused()):
                await (queue.pause() if paused else queue.resume())

    async def status(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "backend": "bullmq",
            "url": redacted(self.url),
            "prefix": f"{self.prefix}:{self.queue_prefix}",
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }
        try:
            async with asyncio.timeout(2):
                counts = {
                    name: await self._bq(name).getJobCounts(
                        "wait", "prioritized", "delayed", "active", "paused"
                    )
                    for name in sorted(self.known)
                }
            self._ok()
            report["queues"] = counts
        except Exception as exc:
            self._failed(exc)
            report["last_error"] = self.last_error
        report["ok"] = self.connected
        if self.last_drift is not None and self.last_reconciled_at is not None:
            report["drift"] = {
                "queued": self.last_drift.queued,
                "missing": self.last_drift.missing,
                "at": self.last_reconciled_at.isoformat(),
            }
        return report


async def _finish_in(pipe: Any, delivery: Delivery) -> None:
    """Queue BullMQ's ``moveToFinished`` (completed, then removed) for a delivery on ``pipe``."""
    _, bull_job, token = delivery
    scripts = bull_job.queue.backend.scripts
    keys, args = scripts.moveToCompletedArgs(bull_job, None, True, token, False)
    await scripts.commands["moveToFinished"](keys=keys, args=args, client=pipe)
