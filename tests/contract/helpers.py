"""Helpers shared by the contract suites: polling with a deadline, running a worker."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.worker import Worker

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_for_status(
    engine: Engine, job_id: UUID, *statuses: JobStatus, timeout: float = 10.0
) -> Job:
    async def probe() -> Job | None:
        job = await engine.store.get_job(job_id)
        return job if job.status in statuses else None

    return await wait_until(probe, what=f"job {job_id} to be {'/'.join(statuses)}", timeout=timeout)


def marked_pids(marker: str) -> list[int]:
    """Live (not zombie) ``sleep <marker>`` processes, as the host sees them (a sandboxed
    command's own pids are those of its PID namespace)."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if cmdline == f"sleep {marker} " and stat[stat.rindex(")") + 2] != "Z":
            found.append(int(name))
    return found


async def event_types(engine: Engine, job_id: UUID) -> list[str]:
    return [e.type for e in await engine.store.list_events(job_id)]


async def default_workspace(engine: Engine) -> UUID:
    ws, _ = await engine.auth.ensure_workspace("default")
    return ws.id


@asynccontextmanager
async def running_worker(
    engine: Engine, *, stop_timeout: float = 15.0, **kwargs: Any
) -> AsyncIterator[Worker]:
    """A real ``Worker`` running as a task; stopped gracefully (and awaited) on exit."""
    worker = engine.worker(**kwargs)
    task = asyncio.create_task(worker.run(), name=f"worker:{worker.worker_id}")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, stop_timeout)
