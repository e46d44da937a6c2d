"""What only the BullMQ backend has: its on-Redis format, acknowledgements, dropped
deliveries and the reconciler. (The shared queue and worker contracts run on it too.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from stitchwork.clock import FakeClock
from stitchwork.domain.jobs import Job, NewJob
from stitchwork.queue.bullmq import BullMQQueue, bull_priority
from stitchwork.queue.reconcile_reads import still_queued
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend

pytestmark = pytest.mark.redis

LEASE = timedelta(seconds=30)


@pytest.fixture
async def bull(bullmq_backend: Backend, clock: FakeClock) -> AsyncIterator[Engine]:
    engine = await bullmq_backend.open_engine(clock=clock)
    try:
        yield engine
    finally:
        await engine.close()


def _queue(engine: Engine) -> BullMQQueue:
    assert isinstance(engine.queue, BullMQQueue)
    return engine.queue


async def _submit(engine: Engine, n: int = 1, **kw: Any) -> list[Job]:
    ws, _ = await engine.auth.ensure_workspace()
    subs = await engine.jobs.submit_many(ws.id, [NewJob("noop", **kw)] * n, actor="t")
    return [s.job for s in subs]


async def _counts(engine: Engine) -> dict[str, int]:
    queue = _queue(engine)._bq("default")
    counts: dict[str, int] = await queue.getJobCounts(
        "wait", "prioritized", "delayed", "active", "completed", "failed"
    )
    return counts


async def test_a_queued_job_is_a_bullmq_job_with_the_same_id_type_and_priority(
    bull: Engine,
) -> None:
    (job,) = await _submit(bull, priority=7)
    stored = await _queue(bull)._bq("default").getJob(str(job.id))
    assert stored is not None
    assert (stored.id, stored.name, stored.priority) == (str(job.id), "noop", bull_priority(7))
    assert stored.data == {"job_id": str(job.id), "type": "noop", "attempt": 1}
    assert bull_priority(1000) == 1
    assert bull_priority(-1000) == 2001


async def test_a_job_due_later_is_a_bullmq_delayed_job(bull: Engine, clock: FakeClock) -> None:
    await _submit(bull, run_after=clock.now() + timedelta(minutes=1))
    assert (await _counts(bull))["delayed"] == 1


async def test_adding_the_same_job_twice_keeps_one_bullmq_job(bull: Engine) -> None:
    (job,) = await _submit(bull)
    await _queue(bull)._add([job])
    assert (await _counts(bull))["prioritized"] == 1


async def test_a_finished_job_is_acknowledged_and_removed_from_redis(bull: Engine) -> None:
    (job,) = await _submit(bull)
    (taken,) = await bull.queue.reserve("w1", 10, LEASE)
    assert (await _counts(bull))["active"] == 1
    assert await bull.store.complete_job(taken.id, "w1", {"ok": True}) is not None
    bull.queue.settle([taken.id])
    await _queue(bull)._flush_settled()
    counts = await _counts(bull)
    assert (counts["active"], counts["completed"]) == (0, 0)
    assert await _queue(bull)._bq("default").getJob(str(job.id)) is None


async def test_a_delivery_the_database_refuses_is_dropped_and_acknowledged(
    bull: Engine,
) -> None:
    (job,) = await _submit(bull)
    ws, _ = await bull.auth.ensure_workspace()
    await bull.jobs.cancel(ws.id, job.id, actor="t")
    assert await bull.queue.reserve("w1", 10, LEASE) == []
    assert await _queue(bull)._bq("default").getJob(str(job.id)) is None
    assert (await bull.store.get_job(job.id)).status.value == "cancelled"


async def test_a_retry_re_adds_the_job_although_its_delivery_was_still_held(
    bull: Engine, clock: FakeClock
) -> None:
    (job,) = await _submit(bull, max_attempts=2)
    (taken,) = await bull.queue.reserve("w1", 10, LEASE)
    moved = await bull.store.fail_job(
        taken.id, "w1", error="boom", result=None, retry_after=timedelta(seconds=5)
    )
    assert moved is not None
    assert moved.attempt == 2
    assert (await _counts(bull))["delayed"] == 1  # the held delivery was finished first
    clock.advance(timedelta(seconds=5))
    assert [j.id for j in await bull.queue.reserve("w2", 10, LEASE)] == [job.id]


async def test_the_reconciler_re_adds_queued_jobs_redis_lost(
    bull: Engine, bullmq_backend: Backend, clock: FakeClock
) -> None:
    jobs = await _submit(bull, 5)
    redis: Any = _queue(bull)._redis
    prefix = bullmq_backend.extra["bullmq_prefix"]
    lost = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    await redis.delete(*lost)  # as if Redis restarted without persistence
    assert await bull.queue.reserve("w1", 10, LEASE) == []

    fresh = await bull.reconciler().reconcile_once()
    assert (fresh.queued, fresh.missing) == (0, 0)  # too recent: an add may be in flight
    clock.advance(timedelta(seconds=2))
    skipped = await bull.reconciler().reconcile_once()
    assert (skipped.queued, skipped.missing) == (0, 0)  # checked within this interval
    await redis.delete(_queue(bull).reconcile_lock_key)  # the interval passed
    drift = await bull.reconciler().reconcile_once()
    assert (drift.queued, drift.missing) == (5, 5)
    assert {j.id for j in await bull.queue.reserve("w1", 10, LEASE)} == {j.id for j in jobs}
    await redis.delete(_queue(bull).reconcile_lock_key)
    again = await bull.reconciler().reconcile_once()
    assert (again.queued, again.missing) == (0, 0)  # running now: nothing to re-add


async def test_the_reconciler_skips_a_job_delivered_and_finished_meanwhile(
    bull: Engine, clock: FakeClock
) -> None:
    (job,) = await _submit(bull)
    clock.advance(timedelta(seconds=2))
    (taken,) = await bull.queue.reserve("w1", 10, LEASE)
    await bull.store.complete_job(taken.id, "w1", None)
    bull.queue.settle([taken.id])
    await _queue(bull)._flush_settled()
    # Read as queued before the delivery, gone from Redis after the acknowledgement:
    assert await still_queued(bull.db, [job.id]) == []


async def test_the_reconciler_brings_bullmq_pause_state_in_line_with_the_database(
    bull: Engine,
) -> None:
    await bull.queue.pause("default")
    bullmq_queue = _queue(bull)._bq("default")
    assert await bullmq_queue.isPaused()
    await bullmq_queue.resume()  # Redis forgot (a restart, say)
    await bull.reconciler().reconcile_once()
    assert await bullmq_queue.isPaused()


async def test_a_foreign_job_in_the_queue_is_dropped(bull: Engine) -> None:
    bullmq_queue = _queue(bull)._bq("default")
    await bullmq_queue.add("not-ours", {"x": 1}, {"jobId": f"foreign-{uuid.uuid4().hex}"})
    assert await bull.queue.reserve("w1", 10, LEASE) == []
    assert (await _counts(bull))["wait"] == 0
