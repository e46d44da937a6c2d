"""A real ``Worker`` against both backends: outcomes, retries, progress, cancellation,
graceful shutdown, leases, and the built-in ``shell`` handler.

Workers run as asyncio tasks; tests wait for outcomes by polling the database with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.runtime.context import JobContext, JobFailed
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.handlers import noop
from tests.conftest import QUEUE_BACKENDS, Backend, backend_named
from tests.contract.helpers import (
    default_workspace,
    event_types,
    marked_pids,
    running_worker,
    wait_for_status,
    wait_until,
)


@pytest.fixture(params=QUEUE_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The worker contract runs on the embedded queue (SQLite, Postgres) and on BullMQ."""
    yield from backend_named(request.param, tmp_path)


ACTOR = "test"


async def _submit(
    engine: Engine, ws: uuid.UUID, type_: str, payload: dict[str, Any], **kw: Any
) -> Job:
    return (await engine.jobs.submit(ws, NewJob(type_, payload, **kw), actor=ACTOR)).job


async def _wait_running(engine: Engine, job_id: uuid.UUID) -> Job:
    return await wait_for_status(engine, job_id, JobStatus.RUNNING)


# -- outcomes ----------------------------------------------------------------------------------


async def test_noop_jobs_complete(engine: Engine, workspace_id: uuid.UUID) -> None:
    subs = await engine.jobs.submit_many(workspace_id, [NewJob("noop")] * 20, actor=ACTOR)
    async with running_worker(engine, concurrency=4):

        async def all_done() -> bool:
            return (await engine.store.count_by_status())[JobStatus.COMPLETED] == 20

        await wait_until(all_done, what="20 noop jobs to complete")
    for sub in subs:
        job = await engine.store.get_job(sub.job.id)
        assert (job.attempt, job.progress_percent, job.lease_owner, job.result) == (
            1,
            100,
            None,
            None,
        )
        assert await event_types(engine, job.id) == [
            "job.created",
            "job.queued",
            "job.started",
            "job.completed",
        ]


async def test_failed_attempt_is_retried_with_backoff_and_completes_on_attempt_2(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id, "sleep", {"seconds": 0, "fail_attempts": 1})
    async with running_worker(engine):
        done = await wait_for_status(engine, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert (done.status, done.attempt, done.result) == (JobStatus.COMPLETED, 2, {"slept_s": 0.0})
    events = await engine.store.list_events(job.id)
    assert [e.type for e in events] == [
        "job.created",
        "job.queued",
        "job.started",
        "job.retried",
        "job.started",
        "job.completed",
    ]
    retried = events[3]
    assert retried.payload["reason"] == "failed"
    assert retried.payload["error"] == "failing attempt 1 of 1 on purpose"
    settings = engine.settings
    low = settings.backoff_base.total_seconds() * (1 - settings.backoff_jitter)
    high = settings.backoff_base.total_seconds() * (1 + settings.backoff_jitter)
    # delay_s is stored rounded to the millisecond
    assert low - 0.0005 <= retried.payload["delay_s"] <= high + 0.0005
    # The second attempt did not start before its backoff elapsed.
    assert events[4].created_at - retried.created_at >= timedelta(seconds=low)


async def test_handler_that_keeps_raising_ends_failed_after_max_attempts(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    calls: list[int] = []

    async def boom(ctx: JobContext) -> dict[str, Any] | None:
        calls.append(ctx.job.attempt)
        raise RuntimeError("disk on fire")

    job = await _submit(engine, workspace_id, "noop", {}, max_attempts=2)
    async with running_worker(engine, handlers={"noop": boom}):
        failed = await wait_for_status(engine, job.id, JobStatus.FAILED)
    assert calls == [1, 2]
    assert (failed.attempt, failed.error, failed.completed_at is not None) == (
        2,
        "RuntimeError: disk on fire",
        True,
    )
    assert await event_types(engine, job.id) == [
        "job.created",
        "job.queued",
        "job.started",
        "job.retried",
        "job.started",
        "job.failed",
    ]


async def test_non_retryable_failure_ends_at_once_with_its_result(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    async def refuse(ctx: JobContext) -> dict[str, Any] | None:
        raise JobFailed("bad input", result={"line": 3}, retryable=False)

    job = await _submit(engine, workspace_id, "noop", {}, max_attempts=5)
    async with running_worker(engine, handlers={"noop": refuse}):
        failed = await wait_for_status(engine, job.id, JobStatus.FAILED)
    assert (failed.attempt, failed.error, failed.result) == (1, "bad input", {"line": 3})


async def test_job_type_without_a_handler_fails_without_retrying(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id, "sleep", {"seconds": 0}, max_attempts=3)
    async with running_worker(engine, handlers={"noop": noop}):
        failed = await wait_for_status(engine, job.id, JobStatus.FAILED)
    assert failed.attempt == 1
    assert failed.error == "this worker has no handler for job type 'sleep'"
    assert await event_types(engine, job.id) == [
        "job.created",
        "job.queued",
        "job.started",
        "job.failed",
    ]


async def test_progress_updates_the_job_and_writes_progress_events(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id, "sleep", {"seconds": 1.0, "progress_steps": 4})
    async with running_worker(engine):

        async def midway() -> Job | None:
            j = await engine.store.get_job(job.id)
            return j if j.status is JobStatus.RUNNING and 0 < j.progress_percent < 100 else None

        seen = await wait_until(midway, what="progress while running")
        done = await wait_for_status(engine, job.id, JobStatus.COMPLETED)
    assert seen.progress_percent in {25, 50, 75}
    assert done.progress_percent == 100
    events = await engine.store.list_events(job.id)
    progress = [e.payload["progress_percent"] for e in events if e.type == "job.progress"]
    # Updates closer than 200 ms apart are coalesced, so under load one may be skipped; what
    # is promised is increasing values, seen midway, ending at 100.
    assert progress == sorted(set(progress))
    assert progress[-1] == 100
    assert set(progress) <= {25, 50, 75, 100}
    assert len(progress) >= 2
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "not JSON"),
        ({"ratio": float("nan")}, "not JSON"),
        ({"text": "a\x00b"}, "NUL characters"),
    ],
    ids=["datetime", "nan", "nul"],
)
async def test_unstorable_result_fails_its_job_at_once_and_spares_the_others(
    engine: Engine, workspace_id: uuid.UUID, bad: dict[str, Any], why: str
) -> None:
    async def handler(ctx: JobContext) -> dict[str, Any] | None:
        return bad if ctx.job.payload.get("bad") else {"fine": True}

    subs = await engine.jobs.submit_many(
        workspace_id, [NewJob("noop", {"bad": i == 3}) for i in range(8)], actor=ACTOR
    )
    async with running_worker(engine, handlers={"noop": handler}, concurrency=8):
        finals = [
            await wait_for_status(
                engine, s.job.id, JobStatus.COMPLETED, JobStatus.FAILED, timeout=3
            )
            for s in subs
        ]
    failed = finals.pop(3)
    assert (failed.status, failed.attempt, failed.result) == (JobStatus.FAILED, 1, None)
    assert failed.error is not None
    assert failed.error.startswith("handler returned a result")
    assert why in failed.error
    assert {(j.status, j.attempt) for j in finals} == {(JobStatus.COMPLETED, 1)}


async def test_unstorable_failure_result_is_dropped_but_the_failure_recorded(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    async def handler(ctx: JobContext) -> dict[str, Any] | None:
        raise JobFailed("nope", result={"at": datetime(2026, 1, 1, tzinfo=UTC)}, retryable=False)

    job = await _submit(engine, workspace_id, "noop", {})
    async with running_worker(engine, handlers={"noop": handler}):
        failed = await wait_for_status(engine, job.id, JobStatus.FAILED, timeout=3)
    assert (failed.attempt, failed.result) == (1, None)
    assert failed.error is not None
    assert failed.error.startswith("nope (result dropped: a result that is not JSON")


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelling_a_running_job_stops_its_handler_and_keeps_it_cancelled(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    saw_stop = asyncio.Event()

    async def cooperative(ctx: JobContext) -> dict[str, Any] | None:
        await ctx.stop_requested.wait()
        saw_stop.set()
        return {"finished": "anyway"}  # must be dropped

    job = await _submit(engine, workspace_id, "noop", {})
    async with running_worker(engine, handlers={"noop": cooperative}) as worker:
        await _wait_running(engine, job.id)
        await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
        await asyncio.wait_for(saw_stop.wait(), 5)
        await wait_until(
            lambda: asyncio.sleep(0, not worker.running_job_ids), what="the worker to let go"
        )
    final = await engine.store.get_job(job.id)
    assert (final.status, final.result) == (JobStatus.CANCELLED, None)
    assert (await event_types(engine, job.id))[-1] == "job.cancelled"
    assert "job.completed" not in await event_types(engine, job.id)


async def test_cancelled_sleep_job_stops_promptly(engine: Engine, workspace_id: uuid.UUID) -> None:
    job = await _submit(engine, workspace_id, "sleep", {"seconds": 60})
    async with running_worker(engine) as worker:
        await _wait_running(engine, job.id)
        await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
        await wait_until(
            lambda: asyncio.sleep(0, not worker.running_job_ids),
            what="the sleep handler to stop",
            timeout=engine.settings.cancel_grace.total_seconds() + 2,
        )
    assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED


async def test_handler_ignoring_the_stop_request_is_cancelled_after_cancel_grace(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    cancelled_at: list[float] = []

    async def stubborn(ctx: JobContext) -> dict[str, Any] | None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled_at.append(time.monotonic())
            raise
        return {"never": True}

    job = await _submit(engine, workspace_id, "noop", {})
    grace = engine.settings.cancel_grace.total_seconds()
    async with running_worker(engine, handlers={"noop": stubborn}) as worker:
        await _wait_running(engine, job.id)
        t0 = time.monotonic()
        await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
        await wait_until(lambda: asyncio.sleep(0, cancelled_at), what="the handler's cancellation")
        assert grace * 0.9 <= cancelled_at[0] - t0 <= grace + 2
        await wait_until(lambda: asyncio.sleep(0, not worker.running_job_ids), what="release")
    assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED
    assert "job.completed" not in await event_types(engine, job.id)


async def test_job_cancelled_by_another_process_is_stopped_at_the_next_heartbeat(
    backend: Backend,
) -> None:
    """No notification reaches the worker here on SQLite: its heartbeat finds the lease gone."""
    engine = await backend.open_engine(heartbeat_interval=timedelta(milliseconds=100))
    api = await backend.open_engine()
    try:
        ws = await default_workspace(engine)
        job = await _submit(engine, ws, "sleep", {"seconds": 60})
        async with running_worker(engine) as worker:
            await _wait_running(engine, job.id)
            await api.store.cancel_job(job.id, workspace_id=ws, actor=ACTOR)  # no notify
            await wait_until(
                lambda: asyncio.sleep(0, not worker.running_job_ids),
                what="the heartbeat to stop the cancelled job",
                timeout=3,
            )
        assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED
    finally:
        await api.close()
        await engine.close()


# -- shutdown and leases -----------------------------------------------------------------------


async def test_graceful_shutdown_finishes_short_jobs_and_releases_long_ones(
    backend: Backend,
) -> None:
    engine = await backend.open_engine(shutdown_grace=timedelta(seconds=1))
    try:
        ws = await default_workspace(engine)
        long = await _submit(engine, ws, "sleep", {"seconds": 60})
        short = await _submit(engine, ws, "sleep", {"seconds": 0.4})
        worker = engine.worker(concurrency=2)
        task = asyncio.create_task(worker.run())
        await _wait_running(engine, long.id)
        await _wait_running(engine, short.id)

        t0 = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 10)
        took = time.monotonic() - t0

        assert 0.9 <= took < 3  # waited for the grace period, not for the long job
        done = await engine.store.get_job(short.id)
        assert (done.status, done.result) == (JobStatus.COMPLETED, {"slept_s": 0.4})
        released = await engine.store.get_job(long.id)
        assert (released.status, released.attempt, released.lease_owner) == (
            JobStatus.QUEUED,
            1,
            None,
        )
        event = (await engine.store.list_events(long.id))[-1]
        assert (event.type, event.payload["reason"], event.payload["attempt"]) == (
            "job.requeued",
            "shutdown",
            1,
        )
        assert "job.completed" not in await event_types(engine, long.id)
    finally:
        await engine.close()


async def test_heartbeats_keep_a_job_running_longer_than_its_lease(backend: Backend) -> None:
    # Ten heartbeats per lease: only a stall of most of a lease (not load) can lose it. The job
    # runs for nearly two leases; without heartbeats the sweeper would re-queue it.
    engine = await backend.open_engine(
        lease=timedelta(milliseconds=1000),
        heartbeat_interval=timedelta(milliseconds=100),
        sweep_interval=timedelta(milliseconds=50),
    )
    try:
        ws = await default_workspace(engine)
        job = await _submit(engine, ws, "sleep", {"seconds": 1.8})
        sweeper = asyncio.create_task(engine.sweeper().run())
        try:
            async with running_worker(engine):
                done = await wait_for_status(engine, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
        finally:
            sweeper.cancel()
        assert (done.status, done.attempt) == (JobStatus.COMPLETED, 1)
        assert "job.requeued" not in await event_types(engine, job.id)
    finally:
        await engine.close()


async def test_job_of_a_dead_worker_is_swept_and_completed_by_another(backend: Backend) -> None:
    engine = await backend.open_engine(sweep_interval=timedelta(milliseconds=50))
    try:
        ws = await default_workspace(engine)
        job = await _submit(engine, ws, "noop", {})
        (taken,) = await engine.queue.reserve("dead-worker", 1, timedelta(milliseconds=100))
        assert taken.id == job.id  # ... and "dead-worker" never heart-beats nor finishes
        sweeper = asyncio.create_task(engine.sweeper().run())
        try:
            async with running_worker(engine):
                done = await wait_for_status(engine, job.id, JobStatus.COMPLETED)
        finally:
            sweeper.cancel()
        assert done.attempt == 2
        assert await event_types(engine, job.id) == [
            "job.created",
            "job.queued",
            "job.started",
            "job.requeued",
            "job.started",
            "job.completed",
        ]
    finally:
        await engine.close()


# -- the shell handler -------------------------------------------------------------------------


async def _run_shell(
    engine: Engine, ws: uuid.UUID, payload: dict[str, Any], *, timeout: float = 10
) -> Job:
    job = await _submit(engine, ws, "shell", payload, max_attempts=1)
    async with running_worker(engine):
        return await wait_for_status(
            engine, job.id, JobStatus.COMPLETED, JobStatus.FAILED, timeout=timeout
        )


async def test_shell_job_records_exit_code_and_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run_shell(engine, workspace_id, {"command": "echo out; echo err >&2"})
    assert job.status is JobStatus.COMPLETED
    assert job.result is not None
    assert (job.result["exit_code"], job.result["output_tail"]) == (0, "out\nerr\n")
    assert job.result["duration_s"] >= 0


async def test_shell_output_tail_keeps_the_last_characters(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run_shell(
        engine, workspace_id, {"command": ["seq", "1", "1000"], "output_tail_chars": 12}
    )
    assert job.result is not None
    assert job.result["output_tail"] == "".join(f"{i}\n" for i in range(1, 1001))[-12:]


async def test_shell_command_list_runs_in_cwd_with_its_env_and_none_of_the_servers(
    engine: Engine, workspace_id: uuid.UUID, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_SECRET", "hunter2-not-for-jobs")
    job = await _run_shell(
        engine,
        workspace_id,
        {
            "command": ["sh", "-c", 'echo "$FOO"; pwd -P; env | sort'],
            "env": {"FOO": "bar"},
            "cwd": str(tmp_path),
        },
    )
    assert job.result is not None
    lines = job.result["output_tail"].splitlines()
    assert lines[:2] == ["bar", str(tmp_path)]  # tmp_path is resolved
    names = {line.split("=", 1)[0] for line in lines[2:]}
    assert "SERVER_SECRET" not in names
    assert not {n for n in names if n.startswith("STITCHWORK_")}
    assert {"PATH", "HOME", "LANG", "FOO"} <= names


async def test_shell_non_zero_exit_fails_with_the_result_stored(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run_shell(engine, workspace_id, {"command": "echo oops; exit 3"})
    assert (job.status, job.error) == (JobStatus.FAILED, "command exited with code 3")
    assert job.result is not None
    assert (job.result["exit_code"], job.result["output_tail"]) == (3, "oops\n")


async def test_shell_command_that_cannot_start_fails_without_retrying(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(
        engine, workspace_id, "shell", {"command": ["/nonexistent/tool"]}, max_attempts=3
    )
    async with running_worker(engine):
        failed = await wait_for_status(engine, job.id, JobStatus.FAILED)
    assert failed.attempt == 1
    assert failed.error is not None
    assert failed.error.startswith("could not start command")


def _marker() -> str:
    """A ``sleep`` duration that names a test's processes in the host's process table."""
    return f"30.{uuid.uuid4().int % 10**6:06d}"


async def test_shell_timeout_kills_the_whole_process_group(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    marker = _marker()
    command = f"sleep {marker} & sleep {marker} & sleep {marker}; wait"
    t0 = time.monotonic()
    job = await _run_shell(engine, workspace_id, {"command": command, "timeout_s": 1})
    assert time.monotonic() - t0 < 6
    assert (job.status, job.error) == (JobStatus.FAILED, "command timed out after 1s")
    assert job.result is not None
    assert job.result["timed_out"] is True
    assert job.result["exit_code"] != 0
    # Every process of the group got the signal; give the kernel a moment to finish them off.
    await wait_until(
        lambda: asyncio.sleep(0, not marked_pids(marker)),
        what="the command's processes to be gone",
        timeout=2,
    )


async def test_cancelling_a_shell_job_kills_its_process_group(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    marker = _marker()
    job = await _submit(
        engine, workspace_id, "shell", {"command": f"sleep {marker} & sleep {marker}; wait"}
    )
    async with running_worker(engine) as worker:
        await _wait_running(engine, job.id)
        await wait_until(
            lambda: asyncio.sleep(0, len(marked_pids(marker)) == 2), what="the command to start"
        )
        await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
        await wait_until(lambda: asyncio.sleep(0, not worker.running_job_ids), what="stop")
    await wait_until(
        lambda: asyncio.sleep(0, not marked_pids(marker)),
        what="the command's processes to be gone",
        timeout=2,
    )
    assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED


async def test_shell_progress_lines_update_progress_and_stay_out_of_the_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(
        engine,
        workspace_id,
        "shell",
        {"command": "echo '::progress::50'; sleep 0.5; echo done"},
        max_attempts=1,
    )
    async with running_worker(engine):

        async def half() -> bool:
            j = await engine.store.get_job(job.id)
            return j.status is JobStatus.RUNNING and j.progress_percent == 50

        await wait_until(half, what="progress 50 while running")
        done = await wait_for_status(engine, job.id, JobStatus.COMPLETED, JobStatus.FAILED)
    assert done.status is JobStatus.COMPLETED
    assert done.result is not None
    assert done.result["output_tail"] == "done\n"
    events = await engine.store.list_events(job.id)
    assert [e.payload["progress_percent"] for e in events if e.type == "job.progress"] == [50]


async def test_shell_output_with_nul_bytes_is_stored(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run_shell(engine, workspace_id, {"command": "printf 'a\\000b\\n'"}, timeout=3)
    assert job.status is JobStatus.COMPLETED
    assert job.result is not None
    assert job.result["output_tail"] == "a\ufffdb\n"


@pytest.mark.parametrize("line", ["::progress::150", "::progress:: 7 "])
async def test_shell_progress_values_are_parsed_and_clamped(
    engine: Engine, workspace_id: uuid.UUID, line: str
) -> None:
    job = await _run_shell(engine, workspace_id, {"command": f"echo '{line}'"})
    expected = min(int(line.split("::")[-1]), 100)
    events = await engine.store.list_events(job.id)
    assert [e.payload["progress_percent"] for e in events if e.type == "job.progress"] == [expected]
