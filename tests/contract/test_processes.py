"""No job's process outlives its worker: the guard, the recorded groups, the janitor, and the
sweeper and scheduler that wait for recorded groups to be gone. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stitchwork.clock import FakeClock
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.domain.plans import parse_plan
from stitchwork.runner.process import process_start_ticks
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.janitor import ProcessJanitor, ThisProcess
from stitchwork.storage.tables import job_processes, resource_locks
from tests.contract.helpers import marked_pids, running_worker, wait_for_status, wait_until

SRC = str(Path(__file__).resolve().parents[2] / "src")


def wait_for(predicate: object, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique ``sleep`` duration that names this test's processes in the process table."""
    value = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"
    yield value
    for pid in marked_pids(value):  # never leave one behind, whatever the test did
        os.kill(pid, signal.SIGKILL)


def test_a_killed_workers_commands_die_with_it(marker: str, tmp_path: Path) -> None:
    """SIGKILL of the process running ``run_process`` (no ``finally`` runs) still takes the
    command and what it started in the background down: the guard sees the worker's pipe
    close and kills its group."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {SRC!r})
        from stitchwork.runner.process import run_process
        asyncio.run(run_process("sleep {marker} & sleep {marker}; wait", timeout_s=600))
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for(lambda: len(marked_pids(marker)) == 2, timeout_s=15, what="both sleeps")
        parent.kill()
        parent.wait(10)
        wait_for(lambda: not marked_pids(marker), timeout_s=5, what="the orphans to die")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_guard_reports_the_commands_own_exit_status() -> None:
    from stitchwork.runner.process import run_process

    async def main() -> tuple[int | None, int | None, str]:
        ok = await run_process(["sh", "-c", "echo out; exit 3"])
        killed = await run_process("kill -TERM $$")
        return ok.returncode, killed.returncode, ok.output_tail

    code, signalled, output = asyncio.run(main())
    assert (code, output) == (3, "out\n")
    assert signalled == -signal.SIGTERM


async def test_a_shell_jobs_process_group_is_recorded_and_closed(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = (
        await engine.jobs.submit(
            workspace_id, NewJob("shell", {"command": "echo hi"}), actor="test"
        )
    ).job
    async with running_worker(engine) as worker:
        done = await wait_for_status(engine, job.id, JobStatus.COMPLETED)
    async with engine.db.read() as conn:
        rows = (
            (await conn.execute(select(job_processes).where(job_processes.c.job_id == job.id)))
            .mappings()
            .all()
        )
    assert len(rows) == 1
    row = rows[0]
    me = ThisProcess.current()
    assert (row["attempt"], row["worker_id"]) == (done.attempt, worker.worker_id)
    assert (row["host"], row["boot_id"], row["owner_pid"]) == (me.host, me.boot_id, me.pid)
    assert row["ended_at"] is not None


async def _record(
    engine: Engine,
    job_id: uuid.UUID,
    pgid: int,
    *,
    owner_pid: int,
    owner_start: int | None,
    boot_id: str | None = None,
) -> uuid.UUID:
    me = ThisProcess.current()
    return await engine.processes.record_started(
        job_id=job_id,
        attempt=1,
        worker_id="dead-worker",
        host=me.host,
        boot_id=boot_id or me.boot_id,
        pgid=pgid,
        leader_start=process_start_ticks(pgid),
        owner_pid=owner_pid,
        owner_start=owner_start,
        now=engine.clock.now(),
    )


async def _open_rows(engine: Engine) -> set[uuid.UUID]:
    async with engine.db.read() as conn:
        stmt = select(job_processes.c.id).where(job_processes.c.ended_at.is_(None))
        return set((await conn.execute(stmt)).scalars())


def _dead_pid() -> tuple[int, int | None]:
    """The pid and start time of a process that has exited (a dead worker)."""
    proc = subprocess.Popen(["sleep", "0.3"])
    start = process_start_ticks(proc.pid)
    proc.wait()
    return proc.pid, start


def _orphan(marker: str) -> subprocess.Popen[bytes]:
    """A process group like one a dead worker left: a shell with a background child."""
    return subprocess.Popen(
        ["sh", "-c", f"sleep {marker} & sleep {marker}; wait"], start_new_session=True
    )


async def test_the_janitor_kills_groups_of_dead_workers_and_spares_live_ones(
    engine: Engine, marker: str
) -> None:
    job_id = uuid.uuid4()
    dead_pid, dead_start = _dead_pid()
    orphan = _orphan(marker)
    alive_owner = subprocess.Popen(  # noqa: ASYNC220 - starts at once, nothing to wait for
        ["sleep", marker], start_new_session=True
    )
    await asyncio.to_thread(
        wait_for, lambda: len(marked_pids(marker)) == 3, timeout_s=10, what="the groups"
    )
    orphaned = await _record(engine, job_id, orphan.pid, owner_pid=dead_pid, owner_start=dead_start)
    # A group whose worker is alive (here: this test process) is that worker's to stop.
    spared = await _record(engine, job_id, alive_owner.pid, owner_pid=os.getpid(), owner_start=None)
    # Rows whose group is gone, or which belong to an earlier boot, are just closed.
    gone = await _record(engine, job_id, dead_pid, owner_pid=dead_pid, owner_start=dead_start)
    rebooted = await _record(
        engine, job_id, alive_owner.pid, owner_pid=dead_pid, owner_start=None, boot_id="old"
    )
    janitor = ProcessJanitor(engine.processes, engine.clock, host_refresh_s=0.0, grace_s=0.5)

    swept = await janitor.sweep_once()

    assert [r.id for r in swept.killed] == [orphaned]
    assert {r.id for r in swept.closed} == {orphaned, gone, rebooted}
    assert await _open_rows(engine) == {spared}
    assert orphan.wait(5) == -signal.SIGTERM
    assert marked_pids(marker) == [alive_owner.pid]  # the spared group still runs
    alive_owner.kill()
    alive_owner.wait(5)


async def test_the_sweeper_waits_for_a_live_recorded_group_on_a_live_host(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock, marker: str
) -> None:
    """A job whose lease expired is not re-queued while a recorded group of it runs on a
    host that is alive; once the group is gone (or the host went silent past the host
    grace), it is."""
    engine = clocked
    job = (await engine.jobs.submit(clocked_ws, NewJob("sleep", {}), actor="t")).job
    reserved = await engine.queue.reserve("w1", 1, timedelta(seconds=5))
    assert [j.id for j in reserved] == [job.id]
    orphan = _orphan(marker)
    dead_pid, dead_start = _dead_pid()
    await _record(engine, job.id, orphan.pid, owner_pid=dead_pid, owner_start=dead_start)
    sweeper = engine.sweeper()
    sweeper.janitor = None  # this test plays the janitor's part by hand
    await engine.processes.seen(
        ThisProcess.current().host, ThisProcess.current().boot_id, clock.now()
    )
    clock.advance(timedelta(seconds=6))  # the lease expired, the host was seen 6 s ago

    assert (await sweeper.sweep_once()).requeued == []
    assert (await engine.store.get_job(job.id)).status is JobStatus.RUNNING

    orphan.kill()
    orphan.wait(5)
    clock.advance(timedelta(seconds=7))  # the host was last seen 13 s ago: past its grace
    result = await sweeper.sweep_once()
    assert [j.id for j in result.requeued] == [job.id]


async def test_the_sweeper_requeues_once_the_janitor_closed_the_group(
    clocked: Engine, clocked_ws: uuid.UUID, clock: FakeClock, marker: str
) -> None:
    engine = clocked
    job = (await engine.jobs.submit(clocked_ws, NewJob("sleep", {}), actor="t")).job
    await engine.queue.reserve("w1", 1, timedelta(seconds=5))
    orphan = _orphan(marker)
    dead_pid, dead_start = _dead_pid()
    await _record(engine, job.id, orphan.pid, owner_pid=dead_pid, owner_start=dead_start)
    sweeper = engine.sweeper()
    clock.advance(timedelta(seconds=6))

    result = await sweeper.sweep_once()  # the janitor kills the orphan, then the sweep runs

    assert [j.id for j in result.requeued] == [job.id]
    assert orphan.wait(5) < 0
    assert not marked_pids(marker)


async def test_a_worker_that_cannot_renew_its_leases_stops_its_jobs(
    engine: Engine, workspace_id: uuid.UUID, marker: str
) -> None:
    """Cut off from the database, a worker fences itself: it stops the job (and so its
    processes) before another worker could be handed it."""
    new = NewJob("shell", {"command": f"sleep {marker}"})
    job = (await engine.jobs.submit(workspace_id, new, actor="test")).job
    async with running_worker(engine) as worker:
        await wait_until(lambda: asyncio.to_thread(marked_pids, marker), what="the command")

        async def unreachable(*_: object, **__: object) -> set[uuid.UUID]:
            raise OSError("database unreachable")

        worker.store.renew_leases = unreachable  # type: ignore[method-assign]
        started = time.monotonic()
        await wait_until(
            lambda: asyncio.to_thread(lambda: not marked_pids(marker)),
            what="the command to be stopped",
            timeout=20,
        )
        lease = engine.settings.lease.total_seconds()
        # Stopped before the lease (6 s) plus the cancel grace could let another worker in.
        assert time.monotonic() - started < lease + engine.settings.cancel_grace.total_seconds()
    assert job.id not in worker.running_job_ids


async def test_a_cancelled_nodes_claims_stay_held_while_its_process_group_lives(
    engine: Engine, workspace_id: uuid.UUID, marker: str
) -> None:
    """A node whose job ended while a process of it still runs (a cancelled job's agent, an
    orphan of a dead worker) keeps its claims until that process is gone: no node with an
    overlapping claim starts next to it."""
    p = parse_plan(
        json.dumps(
            {
                "nodes": [
                    {"id": "wide", "type": "sleep", "claims": ["src"]},
                    {"id": "narrow", "type": "noop", "claims": ["src/a.py"]},
                ],
                "concurrency": 2,
                "failure_policy": "continue",
            }
        ),
        format="json",
    )
    ex = await engine.executions.create(workspace_id, p, actor="t", start=True)
    nodes = {n.node_id: n for n in (await engine.executions.get(workspace_id, ex.id)).nodes}
    assert (nodes["wide"].status, nodes["narrow"].status) == ("running", "ready")
    wide_job = nodes["wide"].job_id
    assert wide_job is not None
    orphan = _orphan(marker)
    dead_pid, dead_start = _dead_pid()
    row = await _record(engine, wide_job, orphan.pid, owner_pid=dead_pid, owner_start=dead_start)
    me = ThisProcess.current()
    await engine.processes.seen(me.host, me.boot_id, engine.clock.now())
    stitcher = engine.executions.stitcher

    await engine.jobs.cancel(workspace_id, wide_job, actor="t")
    await stitcher.advance(ex.id)
    assert await stitcher.release_drained() == 0

    nodes = {n.node_id: n for n in (await engine.executions.get(workspace_id, ex.id)).nodes}
    assert (nodes["wide"].status, nodes["narrow"].status) == ("failed", "ready")
    held = {(r["node_id"], r["claim"]) for r in await _locks(engine)}
    assert held == {("wide", "src")}

    orphan.kill()
    orphan.wait(5)
    await engine.processes.record_ended([row], engine.clock.now())
    assert await stitcher.release_drained() == 1
    await stitcher.advance(ex.id)

    nodes = {n.node_id: n for n in (await engine.executions.get(workspace_id, ex.id)).nodes}
    assert nodes["narrow"].status == "running"
    assert {(r["node_id"], r["claim"]) for r in await _locks(engine)} == {("narrow", "src/a.py")}


async def _locks(engine: Engine) -> list[Any]:
    async with engine.db.read() as conn:
        return list((await conn.execute(select(resource_locks))).mappings())
