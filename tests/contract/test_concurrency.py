"""Concurrency safety on both backends: many workers and reservers, each on its own Engine
(separate connection pools, like separate processes), racing over the same jobs.

Every job runs exactly once at a time, completes exactly once, and no reservation hands the
same job to two callers.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.runtime.context import JobContext
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import job_events, runner_jobs
from tests.conftest import Backend
from tests.contract.helpers import default_workspace, wait_until

N_JOBS = 300
N_WORKERS = 4
CONCURRENCY = 8
LEASE = timedelta(seconds=30)


async def _open_engines(backend: Backend, n: int, **overrides: Any) -> list[Engine]:
    engines: list[Engine] = []
    try:
        for _ in range(n):
            engines.append(await backend.open_engine(**overrides))
    except BaseException:
        await asyncio.gather(*(e.close() for e in engines))
        raise
    return engines


async def _event_counts(engine: Engine) -> dict[tuple[uuid.UUID, str], int]:
    stmt = select(job_events.c.job_id, job_events.c.type, func.count()).group_by(
        job_events.c.job_id, job_events.c.type
    )
    async with engine.db.read() as conn:
        return {(job_id, type_): n for job_id, type_, n in (await conn.execute(stmt)).all()}


async def _jobs(engine: Engine) -> dict[uuid.UUID, Any]:
    async with engine.db.read() as conn:
        rows = (await conn.execute(select(runner_jobs))).mappings().all()
    return {r["id"]: r for r in rows}


async def test_racing_workers_run_every_job_once_and_never_twice_at_the_same_time(
    backend: Backend,
) -> None:
    engines = await _open_engines(backend, N_WORKERS, poll_interval=timedelta(milliseconds=50))
    rng = random.Random(7)
    active: dict[uuid.UUID, str] = {}  # job id -> worker running it right now
    runs: dict[uuid.UUID, list[tuple[str, float, float]]] = defaultdict(list)
    overlaps: list[tuple[uuid.UUID, str, str]] = []
    busy: Counter[str] = Counter()  # worker -> handlers running now
    peak: Counter[str] = Counter()

    def tracker(name: str) -> Any:
        async def track(ctx: JobContext) -> dict[str, Any]:
            job_id = ctx.job.id
            if job_id in active:
                overlaps.append((job_id, active[job_id], name))
            active[job_id] = name
            busy[name] += 1
            peak[name] = max(peak[name], busy[name])
            started = time.monotonic()
            await asyncio.sleep(rng.random() * 0.004)
            runs[job_id].append((name, started, time.monotonic()))
            busy[name] -= 1
            if active.get(job_id) == name:
                del active[job_id]
            return {"by": name}

        return track

    try:
        ws = await default_workspace(engines[0])
        first = await engines[0].jobs.submit_many(ws, [NewJob("noop")] * (N_JOBS // 2), actor="t")
        workers = [
            eng.worker(
                concurrency=CONCURRENCY, worker_id=f"w{i}", handlers={"noop": tracker(f"w{i}")}
            )
            for i, eng in enumerate(engines)
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            rest = []
            for i in range(3):  # more work arrives while they race, through different engines
                await asyncio.sleep(0.05)
                eng = engines[(i + 1) % N_WORKERS]
                rest += await eng.jobs.submit_many(ws, [NewJob("noop")] * (N_JOBS // 6), actor="t")

            async def all_done() -> bool:
                counts = await engines[0].store.count_by_status(ws)
                return counts[JobStatus.COMPLETED] == N_JOBS

            await wait_until(all_done, what=f"{N_JOBS} jobs to complete", timeout=25)
        finally:
            for w in workers:
                w.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)

        ids = {s.job.id for s in first + rest}
        assert len(ids) == N_JOBS
        assert overlaps == []
        assert set(runs) == ids
        ran_twice = {job_id: r for job_id, r in runs.items() if len(r) != 1}
        assert ran_twice == {}

        jobs = await _jobs(engines[0])
        counts = await _event_counts(engines[0])
        for job_id in ids:
            row = jobs[job_id]
            (runner, _, _) = runs[job_id][0]
            assert (row["status"], row["attempt"], row["result"]) == (
                JobStatus.COMPLETED.value,
                1,
                {"by": runner},
            ), job_id
            assert counts[(job_id, "job.started")] == 1, job_id
            assert counts[(job_id, "job.completed")] == 1, job_id
            assert (job_id, "job.requeued") not in counts
            assert (job_id, "job.retried") not in counts
        by_worker = Counter(r[0][0] for r in runs.values())
        assert len(by_worker) >= 2, f"no race happened: {by_worker}"
        assert max(peak.values()) <= CONCURRENCY, f"a worker exceeded its concurrency: {peak}"
    finally:
        await asyncio.gather(*(e.close() for e in engines))


async def test_concurrent_reservations_never_hand_out_a_job_twice_and_miss_none(
    backend: Backend,
) -> None:
    engines = await _open_engines(backend, 6)
    try:
        ws = await default_workspace(engines[0])
        for seed in range(3):
            rng = random.Random(seed)
            new = [NewJob("noop", priority=rng.randint(-2, 2)) for _ in range(rng.randint(60, 200))]
            submitted = {s.job.id for s in await engines[0].jobs.submit_many(ws, new, actor="t")}
            got: dict[str, list[uuid.UUID]] = defaultdict(list)

            async def reserver(
                eng: Engine, name: str, limits: list[int], got: dict[str, list[uuid.UUID]] = got
            ) -> None:
                for limit in limits:
                    batch = await eng.queue.reserve(name, limit, LEASE)
                    if not batch:
                        return
                    assert len(batch) <= limit
                    assert all(j.lease_owner == name for j in batch)
                    got[name] += [j.id for j in batch]

            await asyncio.gather(
                *(
                    reserver(eng, f"s{seed}r{i}", [rng.randint(1, 12) for _ in range(500)])
                    for i, eng in enumerate(engines)
                )
            )
            handed_out = [job_id for ids in got.values() for job_id in ids]
            duplicates = [i for i, n in Counter(handed_out).items() if n > 1]
            assert duplicates == [], f"seed {seed}: reserved twice: {duplicates}"
            assert set(handed_out) == submitted, f"seed {seed}: missed or foreign jobs"
            assert (await engines[0].store.count_by_status(ws))[JobStatus.QUEUED] == 0

        counts = await _event_counts(engines[0])
        jobs = await _jobs(engines[0])
        for job_id, row in jobs.items():
            assert row["status"] == JobStatus.RUNNING.value
            assert counts[(job_id, "job.started")] == 1
    finally:
        await asyncio.gather(*(e.close() for e in engines))
