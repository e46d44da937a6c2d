"""Scale-out on Postgres + Redis with real ``stitchwork worker`` processes: workers killed at
random, a Redis server restarted empty, and the default crash-recovery time.

Every job must complete exactly once (one ``job.completed`` event each) and nothing may be lost.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from sqlalchemy import func, select

from stitchwork.config import Settings
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import job_events, runner_jobs
from tests.conftest import IN_CI, REDIS_URL, drop_redis_prefix, require_redis
from tests.e2e.conftest import eventually, postgres_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.chaos]

Spawn = Callable[..., Popen[bytes]]


@pytest.fixture
def database_url() -> Iterator[str]:
    """Postgres only: the deployment these tests stand for."""
    yield from postgres_database()


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    name = f"swchaos{uuid.uuid4().hex[:8]}"
    yield name
    drop_redis_prefix(name)


def _settings(database_url: str, queue_url: str, prefix: str) -> Settings:
    return Settings(database_url=database_url, queue_url=queue_url, bullmq_prefix=prefix)


@pytest.fixture
async def engine(database_url: str, prefix: str) -> AsyncIterator[Engine]:
    eng = await Engine.open(_settings(database_url, REDIS_URL, prefix))
    try:
        yield eng
    finally:
        await eng.close()


async def _submit(engine: Engine, count: int, seconds: float, attempts: int) -> list[uuid.UUID]:
    ws, _ = await engine.auth.ensure_workspace()
    new = NewJob("sleep", {"seconds": seconds}, max_attempts=attempts)
    ids: list[uuid.UUID] = []
    for start in range(0, count, 500):
        batch = await engine.jobs.submit_many(ws.id, [new] * min(500, count - start), actor="t")
        ids += [s.job.id for s in batch]
    return ids


async def _count(engine: Engine, status: JobStatus) -> int:
    async with engine.db.read() as conn:
        stmt = select(func.count()).where(runner_jobs.c.status == status.value)
        return int(await conn.scalar(stmt) or 0)


async def _completed_events_per_job(engine: Engine) -> dict[uuid.UUID, int]:
    stmt = (
        select(job_events.c.job_id, func.count())
        .where(job_events.c.type == "job.completed")
        .group_by(job_events.c.job_id)
    )
    async with engine.db.read() as conn:
        return {row[0]: row[1] for row in (await conn.execute(stmt)).all()}


async def _running_on(engine: Engine, pid: int) -> set[uuid.UUID]:
    stmt = select(runner_jobs.c.id).where(
        runner_jobs.c.status == JobStatus.RUNNING.value,
        runner_jobs.c.lease_owner.like(f"%:{pid}:%"),
    )
    async with engine.db.read() as conn:
        return set((await conn.execute(stmt)).scalars())


def _worker_env(prefix: str, queue_url: str = REDIS_URL) -> dict[str, str]:
    return {
        "STITCHWORK_QUEUE_URL": queue_url,
        "STITCHWORK_BULLMQ_PREFIX": prefix,
        "STITCHWORK_WORKER_CONCURRENCY": "8",
        "STITCHWORK_LOG_LEVEL": "warning",
    }


async def test_chaos_2000_jobs_complete_exactly_once_while_workers_are_killed(
    engine: Engine, spawn: Spawn, prefix: str
) -> None:
    ids = await _submit(engine, 2000, seconds=0.25, attempts=25)
    env = _worker_env(prefix)
    workers = [spawn("worker", **env) for _ in range(3)]
    rng = random.Random(7)
    killed: list[tuple[int, set[uuid.UUID]]] = []  # pid, jobs it was running when killed
    for _ in range(20):
        await asyncio.sleep(rng.uniform(0.2, 0.6))

        async def busy_worker() -> tuple[int, set[uuid.UUID]] | None:
            order = list(range(len(workers)))
            rng.shuffle(order)
            for index in order:
                held = await _running_on(engine, workers[index].pid)
                if held:
                    return index, held
            return None

        index, held = await eventually(busy_worker, timeout_s=30, what="a worker running jobs")
        victim = workers[index]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        killed.append((victim.pid, held))
        workers[index] = spawn("worker", **env)
    assert await _count(engine, JobStatus.COMPLETED) < len(ids)  # the kills hit a live run

    async def all_completed() -> bool:
        return await _count(engine, JobStatus.COMPLETED) == len(ids)

    await eventually(all_completed, timeout_s=240, what="all 2,000 jobs to complete")
    per_job = await _completed_events_per_job(engine)
    assert set(per_job) == set(ids)
    assert set(per_job.values()) == {1}  # exactly one job.completed event per job

    # Each job a killed worker was running shows how it recovered: it finished just before
    # the kill landed, or its lease expired and it was re-queued as the next attempt.
    recovered = 0
    for pid, held in killed:
        for job_id in held:
            events = await engine.store.list_events(job_id)
            requeued = [
                e
                for e in events
                if e.type == "job.requeued"
                and e.payload["reason"] == "lease_expired"
                and f":{pid}:" in e.payload["previous_owner"]
            ]
            finished_there = any(
                e.type == "job.completed" and f":{pid}:" in e.actor for e in events
            )
            assert requeued or finished_there, f"job {job_id} of killed worker {pid}"
            recovered += len(requeued)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert recovered >= 20, f"only {recovered} recoveries in 20 kills"
    print(f"chaos: 20 kills, {recovered} jobs recovered, all {len(ids)} completed once")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server that keeps nothing on disk, so a restart starts empty."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: the test must run)")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.dir = tmp_path
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _bullmq_holds(url: str, prefix: str, job_ids: set[uuid.UUID]) -> int:
    import redis.asyncio as aioredis

    client: Any = aioredis.from_url(url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(f"{prefix}:stitchwork.default:{job_id}")
            return sum(await pipe.execute())
    finally:
        await client.aclose()


async def _queued_ids(engine: Engine) -> set[uuid.UUID]:
    stmt = select(runner_jobs.c.id).where(runner_jobs.c.status == JobStatus.QUEUED.value)
    async with engine.db.read() as conn:
        return set((await conn.execute(stmt)).scalars())


async def test_redis_restarted_empty_mid_run_loses_nothing(
    database_url: str, redis_server: RedisServer, spawn: Spawn
) -> None:
    prefix = "bull"  # a private server: BullMQ's default prefix
    engine = await Engine.open(_settings(database_url, redis_server.url, prefix))
    try:
        ids = await _submit(engine, 400, seconds=0.05, attempts=5)
        env = {**_worker_env(prefix, redis_server.url), "STITCHWORK_WORKER_CONCURRENCY": "2"}
        workers = [spawn("worker", **env) for _ in range(2)]

        async def some_completed() -> bool:
            return await _count(engine, JobStatus.COMPLETED) >= 40

        await eventually(some_completed, timeout_s=60, what="the run to get going")
        redis_server.stop()
        await asyncio.sleep(1.0)  # workers see the connection drop
        redis_server.start()  # empty: nothing was saved
        back = time.monotonic()

        async def all_queued_held_again() -> bool:
            queued = await _queued_ids(engine)
            return bool(queued) and await _bullmq_holds(redis_server.url, prefix, queued) == len(
                queued
            )

        await eventually(all_queued_held_again, timeout_s=15, what="the reconciler")
        restored_s = time.monotonic() - back
        print(f"redis restart: queued jobs restored {restored_s:.2f}s after Redis returned")
        assert restored_s <= 5, f"queued jobs restored {restored_s:.1f}s after Redis returned"

        async def all_completed() -> bool:
            return await _count(engine, JobStatus.COMPLETED) == len(ids)

        await eventually(all_completed, timeout_s=120, what="the run to complete")
        per_job = await _completed_events_per_job(engine)
        assert set(per_job) == set(ids)
        assert set(per_job.values()) == {1}
        for worker in workers:  # they kept consuming after their broker came back
            assert worker.poll() is None
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(30) == 0
    finally:
        await engine.close()


async def test_default_crash_recovery_is_under_ten_seconds(
    engine: Engine, spawn: Spawn, prefix: str
) -> None:
    """Default lease and sweep settings (not the fast test timings): kill to re-run."""
    defaults = {
        "STITCHWORK_LEASE": "6",
        "STITCHWORK_HEARTBEAT_INTERVAL": "2",
        "STITCHWORK_SWEEP_INTERVAL": "1",
        "STITCHWORK_POLL_INTERVAL": "1",
    }
    assert Settings().lease.total_seconds() == 6  # the defaults this test stands for
    env = {**_worker_env(prefix), **defaults}
    first = spawn("worker", **env)
    (job_id,) = await _submit(engine, 1, seconds=30, attempts=3)

    async def running_on_first() -> bool:
        return job_id in await _running_on(engine, first.pid)

    await eventually(running_on_first, timeout_s=30, what="the first worker to start the job")
    second = spawn("worker", **env)
    await asyncio.sleep(3)  # the second worker is up and idle
    first.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert first.wait(10) == -signal.SIGKILL

    async def rerun() -> bool:
        return job_id in await _running_on(engine, second.pid)

    await eventually(rerun, timeout_s=30, what="the job to run again")
    recovery_s = time.monotonic() - killed_at
    print(f"default crash recovery: kill to re-run {recovery_s:.2f}s")
    assert recovery_s <= 10, f"kill to re-run took {recovery_s:.1f}s"
    job = await engine.store.get_job(job_id)
    assert job.attempt == 2
    second.send_signal(signal.SIGKILL)
