"""Crash safety and graceful shutdown with real ``stitchwork worker`` processes."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from subprocess import Popen
from typing import Any

import pytest

from stitchwork.config import Settings
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.runtime.engine import Engine
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.slow

Spawn = Callable[..., Popen[bytes]]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    eng = await Engine.open(Settings(database_url=database_url))
    try:
        yield eng
    finally:
        await eng.close()


async def _submit(engine: Engine, **payload: Any) -> Any:
    ws, _ = await engine.auth.ensure_workspace()
    submitted = await engine.jobs.submit(
        ws.id, NewJob("sleep", payload, max_attempts=3), actor="test"
    )
    return submitted.job


async def test_job_of_a_killed_worker_is_rerun_once_by_another_worker(
    engine: Engine, spawn: Spawn
) -> None:
    job = await _submit(engine, seconds=2.5)
    first = spawn("worker")

    async def running_on_first() -> bool:
        current = await engine.store.get_job(job.id)
        return current.status is JobStatus.RUNNING and f":{first.pid}:" in (
            current.lease_owner or ""
        )

    await eventually(running_on_first, timeout_s=20, what="the first worker to start the job")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL

    second = spawn("worker")

    async def completed() -> bool:
        return (await engine.store.get_job(job.id)).status is JobStatus.COMPLETED

    await eventually(completed, timeout_s=30, what="the second worker to complete the job")
    done = await engine.store.get_job(job.id)
    events = await engine.store.list_events(job.id)
    types = [e.type for e in events]

    assert done.attempt == 2
    assert types.count("job.completed") == 1
    assert types.count("job.started") == 2
    requeued = [e for e in events if e.type == "job.requeued"]
    assert len(requeued) == 1
    assert requeued[0].payload["reason"] == "lease_expired"
    assert f":{first.pid}:" in requeued[0].payload["previous_owner"]
    assert f":{second.pid}:" in next(e for e in reversed(events) if e.type == "job.started").actor
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    second.send_signal(signal.SIGTERM)
    assert second.wait(15) == 0


async def test_sigterm_lets_short_jobs_finish_and_releases_long_ones(
    engine: Engine, spawn: Spawn
) -> None:
    short = await _submit(engine, seconds=0.5)
    long = await _submit(engine, seconds=60)
    worker = spawn("worker", STITCHWORK_SHUTDOWN_GRACE="2")

    async def both_running() -> bool:
        jobs = [await engine.store.get_job(j.id) for j in (short, long)]
        return all(j.status is JobStatus.RUNNING for j in jobs)

    await eventually(both_running, timeout_s=20, what="both jobs to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0

    assert (await engine.store.get_job(short.id)).status is JobStatus.COMPLETED
    released = await engine.store.get_job(long.id)
    assert released.status is JobStatus.QUEUED
    assert released.attempt == 1  # a graceful release is not a failed attempt
    assert released.lease_owner is None
    last = (await engine.store.list_events(long.id))[-1]
    assert (last.type, last.payload["reason"]) == ("job.requeued", "shutdown")
