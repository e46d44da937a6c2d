"""The queue contract, run on every backend: reservation order and due times, leases,
completion/failure compare-and-set, the lease sweep, release, pause/resume, event gaplessness.

Time is a ``FakeClock``: leases expire and jobs fall due exactly when a test advances it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from stitchwork.clock import FakeClock
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.runtime.engine import Engine
from tests.conftest import QUEUE_BACKENDS, Backend, backend_named
from tests.contract.helpers import default_workspace, event_types

LEASE = timedelta(seconds=30)
ACTOR = "test"


@pytest.fixture(params=QUEUE_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The queue contract runs on the embedded queue (SQLite, Postgres) and on BullMQ."""
    yield from backend_named(request.param, tmp_path)


async def _submit(engine: Engine, ws: uuid.UUID, n: int = 1, **kw: object) -> list[Job]:
    new = NewJob("noop", **kw)  # type: ignore[arg-type]
    subs = await engine.jobs.submit_many(ws, [new] * n, actor=ACTOR)
    return [s.job for s in subs]


async def _one(engine: Engine, ws: uuid.UUID, **kw: object) -> Job:
    return (await _submit(engine, ws, **kw))[0]


async def _reserve_ids(engine: Engine, worker: str = "w1", limit: int = 100) -> list[uuid.UUID]:
    return [j.id for j in await engine.queue.reserve(worker, limit, LEASE)]


# -- reservation -------------------------------------------------------------------------------


async def test_reserve_orders_by_priority_then_due_time_then_fifo(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    t0 = clock.now()
    late = await _one(clocked, clocked_ws, run_after=t0 + timedelta(seconds=10))
    first = await _one(clocked, clocked_ws)
    second = await _one(clocked, clocked_ws)
    urgent = await _one(clocked, clocked_ws, priority=5)
    low = await _one(clocked, clocked_ws, priority=-5)
    early_due = await _one(clocked, clocked_ws, run_after=t0 + timedelta(seconds=5))
    clock.advance(timedelta(seconds=20))
    expected = [urgent.id, first.id, second.id, early_due.id, late.id, low.id]

    # One at a time (each reservation takes the head) ...
    one_by_one = [(await _reserve_ids(clocked, limit=1)) for _ in expected]
    assert one_by_one == [[i] for i in expected]
    assert await _reserve_ids(clocked) == []


async def test_batch_reserve_returns_jobs_in_queue_order(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    low = await _one(clocked, clocked_ws, priority=-1)
    normal = await _submit(clocked, clocked_ws, 3)
    high = await _one(clocked, clocked_ws, priority=1)
    assert await _reserve_ids(clocked, limit=10) == [high.id, *(j.id for j in normal), low.id]


async def test_batch_reserve_takes_many_jobs_in_one_call_up_to_the_limit(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    jobs = await _submit(clocked, clocked_ws, 50)
    batch = await clocked.queue.reserve("w1", 30, LEASE)
    assert [j.id for j in batch] == [j.id for j in jobs[:30]]
    for job in batch:
        assert (job.status, job.lease_owner, job.version) == (JobStatus.RUNNING, "w1", 2)
        assert job.lease_expires_at == clock.now() + LEASE
        assert job.started_at == clock.now()
    assert len(await _reserve_ids(clocked, "w2", limit=100)) == 20
    assert await _reserve_ids(clocked, "w3") == []
    event = (await clocked.store.list_events(batch[0].id))[-1]
    assert (event.seq, event.type, event.actor, event.payload) == (
        3,
        "job.started",
        "w1",
        {"status": "running", "attempt": 1, "worker": "w1"},
    )


async def test_reserve_with_a_zero_limit_takes_nothing(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    await _submit(clocked, clocked_ws, 2)
    assert await clocked.queue.reserve("w1", 0, LEASE) == []
    assert (await clocked.store.count_by_status())[JobStatus.QUEUED] == 2


async def test_job_due_in_the_future_is_not_reserved_until_due(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws, run_after=clock.now() + timedelta(minutes=5))
    assert await _reserve_ids(clocked) == []
    clock.advance(timedelta(minutes=5) - timedelta(microseconds=1))
    assert await _reserve_ids(clocked) == []
    clock.advance(timedelta(microseconds=1))
    assert await _reserve_ids(clocked) == [job.id]


async def test_reserve_can_be_limited_to_named_queues(backend: Backend, clock: FakeClock) -> None:
    engine = await backend.open_engine(clock=clock, queue_routes={"sleep": "slow"})
    try:
        ws = await default_workspace(engine)
        fast = await _one(engine, ws)
        slow = (await engine.jobs.submit(ws, NewJob("sleep"), actor=ACTOR)).job
        assert slow.queue_name == "slow"
        assert [j.id for j in await engine.queue.reserve("w1", 10, LEASE, queues=["slow"])] == [
            slow.id
        ]
        assert await engine.queue.reserve("w1", 10, LEASE, queues=["other"]) == []
        assert [j.id for j in await engine.queue.reserve("w1", 10, LEASE)] == [fast.id]
    finally:
        await engine.close()


# -- leases ------------------------------------------------------------------------------------


async def test_renew_extends_and_returns_only_leases_the_worker_still_holds(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    a, b, c, d, e = (j.id for j in await _submit(clocked, clocked_ws, 5))
    assert await _reserve_ids(clocked, "w1", limit=3) == [a, b, c]
    assert await _reserve_ids(clocked, "w2", limit=1) == [d]
    await clocked.jobs.cancel(clocked_ws, c, actor=ACTOR)
    clock.advance(timedelta(seconds=10))

    held = await clocked.store.renew_leases("w1", [a, b, c, d, e, uuid.uuid4()], LEASE)

    assert held == {a, b}
    for job_id in (a, b):
        assert (await clocked.store.get_job(job_id)).lease_expires_at == clock.now() + LEASE
    other = await clocked.store.get_job(d)
    assert (other.lease_owner, other.lease_expires_at) == (
        "w2",
        clock.now() - timedelta(seconds=10) + LEASE,
    )
    assert await clocked.store.renew_leases("w1", [], LEASE) == set()


async def test_renewing_does_not_change_version_or_events(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    job = await _one(clocked, clocked_ws)
    (running,) = await clocked.queue.reserve("w1", 1, LEASE)
    await clocked.store.renew_leases("w1", [job.id], LEASE)
    after = await clocked.store.get_job(job.id)
    assert (after.version, after.last_event_seq) == (running.version, running.last_event_seq)


async def test_progress_is_recorded_only_by_the_lease_holder(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    assert await clocked.store.report_progress(job.id, "w1", 40)
    assert not await clocked.store.report_progress(job.id, "intruder", 90)
    after = await clocked.store.get_job(job.id)
    assert (after.progress_percent, after.version) == (40, 2)
    event = (await clocked.store.list_events(job.id))[-1]
    assert (event.seq, event.type, event.payload) == (
        4,
        "job.progress",
        {"progress_percent": 40, "attempt": 1},
    )


# -- completion and failure --------------------------------------------------------------------


async def test_complete_stores_the_result_and_frees_the_lease(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    done = await clocked.store.complete_job(job.id, "w1", {"answer": 42})
    assert done is not None
    assert (done.status, done.result, done.progress_percent, done.version) == (
        JobStatus.COMPLETED,
        {"answer": 42},
        100,
        3,
    )
    assert (done.lease_owner, done.lease_expires_at, done.completed_at) == (None, None, clock.now())
    assert await clocked.store.get_job(job.id) == done


async def test_complete_many_stores_each_jobs_own_result_in_one_call(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    ids = [j.id for j in await _submit(clocked, clocked_ws, 4)]
    await clocked.queue.reserve("w1", 4, LEASE)
    results = {ids[0]: {"n": 0}, ids[1]: {"n": 1, "nested": {"x": [1, 2]}}, ids[2]: None}
    results[ids[3]] = {"n": 0}
    done = await clocked.store.complete_jobs("w1", results)
    assert {j.id for j in done} == set(ids)
    for job_id, result in results.items():
        assert (await clocked.store.get_job(job_id)).result == result


async def test_complete_after_cancel_returns_nothing_and_the_job_stays_cancelled(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    cancelled = await clocked.jobs.cancel(clocked_ws, job.id, actor=ACTOR)

    assert await clocked.store.complete_jobs("w1", {job.id: {"late": True}}) == []
    failed = await clocked.store.fail_job(job.id, "w1", error="x", result=None, retry_after=None)
    assert failed is None
    assert not await clocked.store.report_progress(job.id, "w1", 50)

    assert await clocked.store.get_job(job.id) == cancelled
    assert "job.completed" not in await event_types(clocked, job.id)


async def test_a_job_is_never_completed_twice(clocked: Engine, clocked_ws: uuid.UUID) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    assert await clocked.store.complete_job(job.id, "w1", None) is not None
    assert await clocked.store.complete_job(job.id, "w1", {"again": 1}) is None
    assert await clocked.store.complete_job(job.id, "w2", {"other": 1}) is None
    assert (await event_types(clocked, job.id)).count("job.completed") == 1
    assert (await clocked.store.get_job(job.id)).result is None


async def test_only_the_lease_holder_can_complete_or_fail(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    assert await clocked.store.complete_job(job.id, "w2", None) is None
    assert (
        await clocked.store.fail_job(job.id, "w2", error="x", result=None, retry_after=None) is None
    )
    assert (await clocked.store.get_job(job.id)).status is JobStatus.RUNNING


async def test_fail_with_retry_after_requeues_the_next_attempt_later(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    await clocked.store.report_progress(job.id, "w1", 60)
    delay = timedelta(seconds=7)

    queued = await clocked.store.fail_job(
        job.id, "w1", error="flaky", result={"partial": True}, retry_after=delay
    )

    assert queued is not None
    assert (queued.status, queued.attempt, queued.error, queued.result) == (
        JobStatus.QUEUED,
        2,
        "flaky",
        {"partial": True},
    )
    assert (queued.run_after, queued.lease_owner, queued.progress_percent) == (
        clock.now() + delay,
        None,
        0,
    )
    event = (await clocked.store.list_events(job.id))[-1]
    assert (event.type, event.payload) == (
        "job.retried",
        {"status": "queued", "attempt": 2, "reason": "failed", "error": "flaky", "delay_s": 7.0},
    )
    clock.advance(delay - timedelta(milliseconds=1))
    assert await _reserve_ids(clocked, "w2") == []
    clock.advance(timedelta(milliseconds=1))
    (again,) = await clocked.queue.reserve("w2", 5, LEASE)
    assert (again.id, again.attempt, again.lease_owner) == (job.id, 2, "w2")


async def test_fail_without_retry_after_ends_the_job_failed(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    failed = await clocked.store.fail_job(
        job.id, "w1", error="exit 3", result={"exit_code": 3}, retry_after=None
    )
    assert failed is not None
    assert (failed.status, failed.attempt, failed.error, failed.result, failed.lease_owner) == (
        JobStatus.FAILED,
        1,
        "exit 3",
        {"exit_code": 3},
        None,
    )
    assert (await clocked.store.list_events(job.id))[-1].payload == {
        "status": "failed",
        "attempt": 1,
        "error": "exit 3",
    }
    assert await _reserve_ids(clocked) == []


# -- the lease sweep ---------------------------------------------------------------------------


async def test_expired_lease_is_requeued_as_the_next_attempt(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws, max_attempts=2)
    await clocked.queue.reserve("w1", 1, timedelta(seconds=5))
    clock.advance(timedelta(seconds=5))  # expires strictly after the lease
    nothing = await clocked.store.expire_leases(actor="sweeper")
    assert (nothing.requeued, nothing.failed) == ([], [])

    clock.advance(timedelta(milliseconds=1))
    swept = await clocked.store.expire_leases(actor="sweeper")

    assert swept.failed == []
    (requeued,) = swept.requeued
    assert (requeued.id, requeued.status, requeued.attempt, requeued.lease_owner) == (
        job.id,
        JobStatus.QUEUED,
        2,
        None,
    )
    event = (await clocked.store.list_events(job.id))[-1]
    assert (event.type, event.actor, event.payload) == (
        "job.requeued",
        "sweeper",
        {"status": "queued", "attempt": 2, "reason": "lease_expired", "previous_owner": "w1"},
    )
    # The lost worker's late result is dropped; the job runs again elsewhere.
    assert await clocked.store.complete_job(job.id, "w1", {"late": True}) is None
    (again,) = await clocked.queue.reserve("w2", 1, LEASE)
    assert (again.id, again.attempt) == (job.id, 2)
    assert await clocked.store.complete_job(job.id, "w1", None) is None
    assert await clocked.store.complete_job(job.id, "w2", {"ok": 1}) is not None


async def test_expired_lease_on_the_last_attempt_fails_the_job(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws, max_attempts=1)
    await clocked.queue.reserve("w1", 1, LEASE)
    clock.advance(LEASE + timedelta(seconds=1))

    swept = await clocked.store.expire_leases(actor="sweeper")

    assert swept.requeued == []
    (failed,) = swept.failed
    assert (failed.id, failed.status, failed.attempt, failed.completed_at) == (
        job.id,
        JobStatus.FAILED,
        1,
        clock.now(),
    )
    assert failed.error is not None
    assert "lease expired" in failed.error
    assert "w1" in failed.error
    event = (await clocked.store.list_events(job.id))[-1]
    assert event.type == "job.failed"
    assert event.payload["reason"] == "lease_expired"
    assert event.payload["error"] == failed.error


async def test_a_renewed_lease_is_not_swept(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    clock.advance(LEASE - timedelta(seconds=1))
    assert await clocked.store.renew_leases("w1", [job.id], LEASE) == {job.id}
    clock.advance(timedelta(seconds=2))
    swept = await clocked.store.expire_leases(actor="sweeper")
    assert (swept.requeued, swept.failed) == ([], [])
    assert (await clocked.store.get_job(job.id)).status is JobStatus.RUNNING


async def test_sweeper_requeues_and_wakes_idle_workers(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws)
    await clocked.queue.reserve("w1", 1, LEASE)
    clock.advance(LEASE * 2)
    waiter = asyncio.create_task(clocked.queue.wait_for_work(timedelta(seconds=30)))
    await asyncio.sleep(0)  # let the waiter start waiting
    result = await clocked.sweeper(actor="sweeper").sweep_once()
    assert [j.id for j in result.requeued] == [job.id]
    await asyncio.wait_for(waiter, 5)


async def test_release_requeues_running_jobs_with_the_same_attempt(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    a, b = (j.id for j in await _submit(clocked, clocked_ws, 2))
    await clocked.queue.reserve("w1", 1, LEASE)
    await clocked.queue.reserve("w2", 1, LEASE)

    released = await clocked.store.release_jobs("w1", [a, b])  # b is not w1's

    assert [(j.id, j.status, j.attempt, j.lease_owner) for j in released] == [
        (a, JobStatus.QUEUED, 1, None)
    ]
    assert (await clocked.store.list_events(a))[-1].payload == {
        "status": "queued",
        "attempt": 1,
        "reason": "shutdown",
        "previous_owner": "w1",
    }
    assert (await clocked.store.get_job(b)).lease_owner == "w2"
    assert await _reserve_ids(clocked, "w3") == [a]
    assert await clocked.store.release_jobs("w1", []) == []


# -- pause / resume ----------------------------------------------------------------------------


async def test_paused_queue_is_not_reserved_until_resumed(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    jobs = await _submit(clocked, clocked_ws, 3)
    await clocked.queue.reserve("w1", 1, LEASE)
    await clocked.queue.pause("default")
    await clocked.queue.pause("default")  # idempotent

    assert await _reserve_ids(clocked) == []
    (info,) = await clocked.queue.list_queues()
    assert (info.name, info.paused, info.queued, info.running) == ("default", True, 2, 1)

    await clocked.queue.resume("default")
    (info,) = await clocked.queue.list_queues()
    assert not info.paused
    assert await _reserve_ids(clocked) == [j.id for j in jobs[1:]]


async def test_pausing_one_queue_leaves_others_running(backend: Backend, clock: FakeClock) -> None:
    engine = await backend.open_engine(clock=clock, queue_routes={"sleep": "slow"})
    try:
        ws = await default_workspace(engine)
        fast = await _one(engine, ws)
        await engine.jobs.submit(ws, NewJob("sleep"), actor=ACTOR)
        await engine.queue.pause("slow")
        assert await _reserve_ids(engine) == [fast.id]
        queues = {q.name: q for q in await engine.queue.list_queues()}
        assert (queues["slow"].paused, queues["slow"].queued) == (True, 1)
        assert (queues["default"].paused, queues["default"].running) == (False, 1)
    finally:
        await engine.close()


async def test_list_queues_shows_the_default_queue_when_empty(clocked: Engine) -> None:
    (info,) = await clocked.queue.list_queues()
    assert (info.name, info.paused, info.queued, info.running) == ("default", False, 0, 0)


# -- wake-ups and cancellation notices ---------------------------------------------------------


async def test_submitting_wakes_a_waiting_worker(clocked: Engine, clocked_ws: uuid.UUID) -> None:
    await clocked.queue.wait_for_work(timedelta(milliseconds=1))  # clear stale wake-ups
    waiter = asyncio.create_task(clocked.queue.wait_for_work(timedelta(seconds=30)))
    await asyncio.sleep(0)
    await _one(clocked, clocked_ws)
    await asyncio.wait_for(waiter, 5)


async def test_cancelling_a_running_job_notifies_cancel_listeners(
    clocked: Engine, clocked_ws: uuid.UUID
) -> None:
    queued, running = await _submit(clocked, clocked_ws, 2)
    await clocked.queue.reserve("w1", 1, LEASE)  # takes `queued`, the older one
    heard: list[uuid.UUID] = []
    got = asyncio.Event()

    def listener(job_id: uuid.UUID) -> None:
        heard.append(job_id)
        got.set()

    clocked.queue.add_cancel_listener(listener)
    try:
        await clocked.jobs.cancel(clocked_ws, running.id, actor=ACTOR)  # still queued: no notice
        await clocked.jobs.cancel(clocked_ws, queued.id, actor=ACTOR)
        await asyncio.wait_for(got.wait(), 5)
    finally:
        clocked.queue.remove_cancel_listener(listener)
    assert heard == [queued.id]


# -- invariants over a whole lifecycle ---------------------------------------------------------


async def test_events_are_gapless_and_every_status_change_bumps_version(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock
) -> None:
    job = await _one(clocked, clocked_ws, max_attempts=3)
    versions = [job.version]
    store = clocked.store

    async def reserve(worker: str) -> None:
        (j,) = await clocked.queue.reserve(worker, 1, LEASE)
        versions.append(j.version)

    async def moved(j: Job | None) -> None:
        assert j is not None
        versions.append(j.version)

    await reserve("w1")
    await store.report_progress(job.id, "w1", 30)
    await moved(await store.fail_job(job.id, "w1", error="e", result=None, retry_after=LEASE))
    clock.advance(LEASE)
    await reserve("w2")
    clock.advance(LEASE * 2)
    swept = await store.expire_leases(actor="sweeper")
    versions.append(swept.requeued[0].version)
    await reserve("w3")
    (released,) = await store.release_jobs("w3", [job.id])
    versions.append(released.version)
    await reserve("w4")
    await moved(await store.fail_job(job.id, "w4", error="e", result=None, retry_after=None))
    await moved(await clocked.jobs.retry(clocked_ws, job.id, actor=ACTOR))
    await clocked.jobs.cancel(clocked_ws, job.id, actor=ACTOR)
    await moved(await clocked.jobs.retry(clocked_ws, job.id, actor=ACTOR))
    await reserve("w5")
    await store.report_progress(job.id, "w5", 80)
    await moved(await store.complete_job(job.id, "w5", {"ok": True}))

    events = await store.list_events(job.id)
    final = await store.get_job(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert final.last_event_seq == len(events)
    assert [e.type for e in events] == [
        "job.created",
        "job.queued",
        "job.started",
        "job.progress",
        "job.retried",
        "job.started",
        "job.requeued",
        "job.started",
        "job.requeued",
        "job.started",
        "job.failed",
        "job.retried",
        "job.cancelled",
        "job.retried",
        "job.started",
        "job.progress",
        "job.completed",
    ]
    assert [e.payload["attempt"] for e in events if e.type == "job.started"] == [1, 2, 3, 3, 5]
    # Cancel is not in `versions` (asserted through the final count instead).
    assert versions == sorted(set(versions))
    status_changes = sum(e.type not in {"job.created", "job.progress"} for e in events) - 1
    assert final.version == 1 + status_changes
    assert (final.status, final.attempt) == (JobStatus.COMPLETED, 5)
