"""Steps and output streaming through a real ``Worker``, on SQLite and Postgres: the shell
handler's one tracked step, bounded output under load, the ``emit`` job type, and handlers
that use ``ctx.step`` themselves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from stitchwork.domain.events import Event, EventType
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.domain.steps import Step, StepPhase, StepStatus, StepType
from stitchwork.runtime.context import JobContext
from stitchwork.runtime.engine import Engine
from tests.contract.helpers import running_worker, wait_for_status, wait_until

ACTOR = "test"
DONE = (JobStatus.COMPLETED, JobStatus.FAILED)


async def _submit(
    engine: Engine, ws: uuid.UUID, type_: str, payload: dict[str, Any], **kw: Any
) -> Job:
    return (await engine.jobs.submit(ws, NewJob(type_, payload, **kw), actor=ACTOR)).job


async def _run(
    engine: Engine,
    ws: uuid.UUID,
    type_: str,
    payload: dict[str, Any],
    *,
    timeout: float = 10,
    **kw: Any,
) -> Job:
    """Submit one job, run a real worker until it ended (no retries unless asked)."""
    handlers = kw.pop("handlers", None)
    kw.setdefault("max_attempts", 1)
    job = await _submit(engine, ws, type_, payload, **kw)
    async with running_worker(engine, handlers=handlers):
        return await wait_for_status(engine, job.id, *DONE, timeout=timeout)


async def _run_shell(engine: Engine, ws: uuid.UUID, command: str, **payload: Any) -> Job:
    return await _run(engine, ws, "shell", {"command": command, **payload})


async def _outputs(engine: Engine, job: Job) -> list[Event]:
    return await engine.store.list_events(job.id, types=("step.output",))


def _streamed(outputs: list[Event]) -> str:
    return "".join(e.payload["chunk"] for e in outputs)


async def _only_step(engine: Engine, ws: uuid.UUID, job: Job) -> Step:
    (step,) = await engine.jobs.steps(ws, job.id)
    return step


# -- the shell handler's step ------------------------------------------------------------------


async def test_shell_job_runs_as_one_completed_command_step_with_its_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    command = "echo hello; echo world >&2"
    job = await _run_shell(engine, workspace_id, command)
    assert job.status is JobStatus.COMPLETED

    step = await _only_step(engine, workspace_id, job)
    assert (step.ordinal, step.name, step.phase, step.type, step.status) == (
        1,
        f"$ {command}",
        StepPhase.EXECUTION,
        StepType.COMMAND,
        StepStatus.COMPLETED,
    )
    assert (step.output_tail, step.error, step.attempt) == ("hello\nworld\n", None, 1)
    assert step.duration_s is not None
    assert 0 <= step.duration_s < 5

    events = await engine.store.list_events(job.id)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["job.created", "job.queued", "job.started", "step.started"]
    assert kinds[-2:] == ["step.completed", "job.completed"]
    assert set(kinds[4:-2]) == {"step.output"}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.step_id for e in events if e.type.startswith("step.")} == {step.id}


async def test_long_command_name_is_cut_to_150_chars(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    command = "true " + "x" * 300
    job = await _run_shell(engine, workspace_id, command)
    step = await _only_step(engine, workspace_id, job)
    assert step.name == f"$ {command[:150]}"


async def test_step_output_events_concatenated_equal_the_commands_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    # Output in bursts over ~0.5 s, so it arrives as several chunks.
    command = "for i in $(seq 1 10); do seq $i 100 $((i * 300)); sleep 0.05; done"
    expected = "".join("".join(f"{n}\n" for n in range(i, i * 300 + 1, 100)) for i in range(1, 11))
    job = await _run_shell(engine, workspace_id, command)
    assert job.status is JobStatus.COMPLETED

    outputs = await _outputs(engine, job)
    assert len(outputs) > 1
    assert _streamed(outputs) == expected
    assert not any("dropped_chars" in e.payload for e in outputs)
    step = await _only_step(engine, workspace_id, job)
    assert step.output_tail == expected[-8_000:]


async def test_non_zero_exit_fails_the_step_with_the_error_and_the_job(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run_shell(engine, workspace_id, "echo oops; exit 3")
    assert (job.status, job.error) == (JobStatus.FAILED, "command exited with code 3")

    step = await _only_step(engine, workspace_id, job)
    assert (step.status, step.error, step.output_tail) == (
        StepStatus.FAILED,
        "command exited with code 3",
        "oops\n",
    )
    failed = (await engine.store.list_events(job.id, types=("step.failed",)))[0]
    assert failed.payload["error"] == "command exited with code 3"
    assert failed.payload["duration_s"] >= 0


async def test_retried_attempt_adds_a_new_step_for_the_new_attempt(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run(
        engine, workspace_id, "shell", {"command": "exit 1"}, max_attempts=2, timeout=15
    )
    assert (job.status, job.attempt) == (JobStatus.FAILED, 2)
    steps = await engine.jobs.steps(workspace_id, job.id)
    assert [(s.ordinal, s.attempt, s.status) for s in steps] == [
        (1, 1, StepStatus.FAILED),
        (2, 2, StepStatus.FAILED),
    ]
    kinds = [e.type for e in await engine.store.list_events(job.id)]
    assert kinds.count("job.retried") == 1
    assert kinds[-2:] == ["step.failed", "job.failed"]


async def test_progress_lines_update_progress_and_stay_out_of_the_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    command = "echo '::progress::30'; sleep 0.3; echo out; echo '::progress::60'; sleep 0.3"
    job = await _run_shell(engine, workspace_id, command)
    assert job.status is JobStatus.COMPLETED

    assert _streamed(await _outputs(engine, job)) == "out\n"
    assert (await _only_step(engine, workspace_id, job)).output_tail == "out\n"
    progress = await engine.store.list_events(job.id, types=("job.progress",))
    assert [e.payload["progress_percent"] for e in progress] == [30, 60]
    assert job.progress_percent == 100


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


async def test_background_process_left_behind_is_killed_and_the_job_completes(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    started = time.monotonic()
    job = await _run_shell(engine, workspace_id, 'echo "pgid $$"; sleep 30 & echo hi')
    elapsed = time.monotonic() - started
    assert job.status is JobStatus.COMPLETED, job.error
    assert elapsed < 6
    assert job.result is not None
    assert job.result["exit_code"] == 0

    lines = job.result["output_tail"].splitlines()
    assert lines[1:] == ["hi"]
    pgid = int(lines[0].removeprefix("pgid "))

    async def group_gone() -> bool:
        return not _group_members(pgid)

    await wait_until(group_gone, what=f"process group {pgid} to be empty", timeout=3)
    assert (await _only_step(engine, workspace_id, job)).status is StepStatus.COMPLETED


async def test_200kb_line_without_newline_is_streamed_and_the_job_completes(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    size = 200_000
    job = await _run_shell(engine, workspace_id, f"head -c {size} /dev/zero | tr '\\0' x")
    assert job.status is JobStatus.COMPLETED, job.error

    outputs = await _outputs(engine, job)
    text = _streamed(outputs)
    dropped = sum(e.payload.get("dropped_chars", 0) for e in outputs)
    assert set(text) == {"x"}
    assert len(text) + dropped == size  # every char was either written or counted as dropped
    assert all(len(e.payload["chunk"]) <= 16_384 for e in outputs)
    step = await _only_step(engine, workspace_id, job)
    assert step.output_tail == "x" * 8_000


async def test_chatty_command_writes_a_bounded_number_of_output_events(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    size = 2_000_000
    job = await _run_shell(engine, workspace_id, f"yes | head -c {size}")
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result is not None

    outputs = await _outputs(engine, job)
    # At most one write per 100 ms (plus the first and the final flush).
    step = await _only_step(engine, workspace_id, job)
    assert step.duration_s is not None
    assert len(outputs) <= step.duration_s * 10 + 3, (len(outputs), step.duration_s)
    assert all(len(e.payload["chunk"]) <= 16_384 for e in outputs)
    dropped = sum(e.payload.get("dropped_chars", 0) for e in outputs)
    assert dropped > 0
    text = _streamed(outputs)
    assert len(text) + dropped == size
    assert set(text) == {"y", "\n"}
    assert job.result["output_tail"].endswith("y\ny\n")


# -- the emit job type -------------------------------------------------------------------------


async def test_emit_writes_exactly_count_numbered_output_events_in_seq_order(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run(engine, workspace_id, "emit", {"count": 500})
    assert job.status is JobStatus.COMPLETED, job.error
    assert job.result == {"emitted": 500}

    outputs = await _outputs(engine, job)
    assert [e.payload["chunk"] for e in outputs] == [f"event {i}\n" for i in range(1, 501)]
    seqs = [e.seq for e in outputs]
    assert seqs == list(range(seqs[0], seqs[0] + 500))
    step = await _only_step(engine, workspace_id, job)
    assert (step.name, step.status) == ("emit events", StepStatus.COMPLETED)


async def test_emit_at_a_rate_writes_one_event_per_output(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _run(engine, workspace_id, "emit", {"count": 20, "rate_per_s": 200})
    assert job.status is JobStatus.COMPLETED, job.error
    outputs = await _outputs(engine, job)
    assert [e.payload["chunk"] for e in outputs] == [f"event {i}\n" for i in range(1, 21)]


# -- handlers that use ctx.step ----------------------------------------------------------------


async def test_handler_raising_inside_a_step_fails_the_step_and_the_job(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    async def broken(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("prepare"):
            await ctx.output("preparing\n")
        async with ctx.step("explode", phase=StepPhase.VALIDATION):
            await ctx.output("about to fail\n")
            raise ValueError("kaboom")
        return None  # pragma: no cover

    job = await _run(engine, workspace_id, "noop", {}, handlers={"noop": broken})
    assert (job.status, job.error) == (JobStatus.FAILED, "ValueError: kaboom")

    steps = await engine.jobs.steps(workspace_id, job.id)
    assert [(s.name, s.status, s.error, s.output_tail) for s in steps] == [
        ("prepare", StepStatus.COMPLETED, None, "preparing\n"),
        ("explode", StepStatus.FAILED, "kaboom", "about to fail\n"),
    ]
    kinds = [e.type for e in await engine.store.list_events(job.id)]
    assert kinds[3:] == [
        "step.started",
        "step.output",
        "step.completed",
        "step.started",
        "step.output",  # output written before the error is flushed, not lost
        "step.failed",
        "job.failed",
    ]


async def test_output_outside_a_step_raises_runtime_error(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    seen: list[str] = []

    async def stray(ctx: JobContext) -> dict[str, Any] | None:
        try:
            await ctx.output("nowhere to go")
        except RuntimeError as exc:
            seen.append(str(exc))
        return None

    job = await _run(engine, workspace_id, "noop", {}, handlers={"noop": stray})
    assert job.status is JobStatus.COMPLETED
    assert len(seen) == 1
    assert "no open step" in seen[0]
    assert await engine.jobs.steps(workspace_id, job.id) == []
    assert await _outputs(engine, job) == []


async def test_step_handle_records_tokens_events_immediate_output_and_skips(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    async def agent(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("agent", type_=StepType.AI_ACTION) as step:
            await ctx.tokens(100, 10)
            await step.event(EventType.AI_TOOL_CALLED, {"tool": "read_file"})
            await step.output_now(["a\n", "b\n"])
            await ctx.tokens(1, 1)
        async with ctx.step("lint", phase=StepPhase.VALIDATION) as step:
            step.skip("no files changed")
        return {"ok": True}

    job = await _run(engine, workspace_id, "noop", {}, handlers={"noop": agent})
    assert job.status is JobStatus.COMPLETED, job.error

    agent_step, lint = await engine.jobs.steps(workspace_id, job.id)
    assert (agent_step.status, agent_step.tokens_input, agent_step.tokens_output) == (
        StepStatus.COMPLETED,
        101,
        11,
    )
    assert agent_step.output_tail == "a\nb\n"
    assert (lint.status, lint.phase) == (StepStatus.SKIPPED, StepPhase.VALIDATION)
    events = await engine.store.list_events(job.id)
    assert [e.type for e in events][3:] == [
        "step.started",
        "ai.tokens_used",
        "ai.tool_called",
        "step.output",
        "step.output",
        "ai.tokens_used",
        "step.completed",
        "step.started",
        "step.skipped",
        "job.completed",
    ]
    assert events[-2].payload["reason"] == "no files changed"
    assert events[-4].payload["tokens_input"] == 101


async def test_cancelled_job_stops_its_output_and_is_not_logged_as_a_crash(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(
        engine,
        workspace_id,
        "shell",
        {"command": "while true; do echo tick; sleep 0.05; done"},
        max_attempts=1,
    )
    with capture_logs() as logs:
        async with running_worker(engine) as worker:

            async def some_output() -> bool:
                return len(await _outputs(engine, job)) >= 2

            await wait_until(some_output, what="output to stream")
            await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
            await wait_until(
                lambda: asyncio.sleep(0, not worker.running_job_ids), what="the handler to stop"
            )
    assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED
    events = await engine.store.list_events(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "job.cancelled"  # nothing was written after the cancel
    # Losing the job is the expected end of a cancelled handler, not a crash.
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []


async def test_handler_ending_its_step_after_a_cancel_is_not_logged_as_a_crash(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    async def patient(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("wait for a cancel"):
            await ctx.output("waiting\n")
            await ctx.sleep(30)  # returns as soon as a stop is requested
        return None  # the block's exit could not record the step: the job is no longer ours

    job = await _submit(engine, workspace_id, "noop", {}, max_attempts=1)
    with capture_logs() as logs:
        async with running_worker(engine, handlers={"noop": patient}) as worker:
            await wait_until(lambda: _outputs(engine, job), what="the step's output")
            await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
            await wait_until(
                lambda: asyncio.sleep(0, not worker.running_job_ids), what="the handler to stop"
            )
    assert (await engine.store.get_job(job.id)).status is JobStatus.CANCELLED
    assert (await engine.store.list_events(job.id))[-1].type == "job.cancelled"
    assert [e["event"] for e in logs if e["log_level"] in ("error", "critical")] == []
    assert "job_lost" in [e["event"] for e in logs]
