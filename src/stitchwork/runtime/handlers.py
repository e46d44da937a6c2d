"""Built-in job handlers: ``shell``, ``noop``, ``sleep`` and ``emit``."""

from __future__ import annotations

import os
import re
import shlex
import time
from typing import Any

from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.runner.process import OutputTail, ProcessStartError, run_process
from stitchwork.runtime.context import Handler, JobContext, JobFailed, StepHandle
from stitchwork.services.job_types import EmitPayload, ShellPayload, SleepPayload

# ASCII: the same lines match as when this matched raw bytes (no Unicode digits or spaces).
PROGRESS_LINE = re.compile(r"^::progress::\s*(\d{1,3})\s*$", re.ASCII)


async def noop(ctx: JobContext) -> dict[str, Any] | None:
    return None


async def sleep(ctx: JobContext) -> dict[str, Any] | None:
    payload = SleepPayload.model_validate(ctx.job.payload)
    if ctx.job.attempt <= payload.fail_attempts:
        raise JobFailed(f"failing attempt {ctx.job.attempt} of {payload.fail_attempts} on purpose")
    steps = max(payload.progress_steps, 1)
    for i in range(steps):
        if await ctx.sleep(payload.seconds / steps):
            return {"slept_s": payload.seconds * i / steps, "stopped": True}
        if payload.progress_steps:
            await ctx.progress(round(100 * (i + 1) / steps))
    return {"slept_s": payload.seconds}


async def shell(ctx: JobContext) -> dict[str, Any] | None:
    """Run a command as one tracked step, streaming its output as ``step.output`` events.

    The command runs in its own process group. On timeout or cancellation the whole group is
    stopped (SIGTERM, then SIGKILL); when the command itself exits, whatever it left running in
    its group is stopped too, so a job never leaks background processes.
    """
    payload = ShellPayload.model_validate(ctx.job.payload)
    label = payload.command if isinstance(payload.command, str) else shlex.join(payload.command)
    async with ctx.step(
        f"$ {label[:150]}", phase=StepPhase.EXECUTION, type_=StepType.COMMAND
    ) as step:
        return await _run_shell(ctx, step, payload)


async def _run_shell(ctx: JobContext, step: StepHandle, payload: ShellPayload) -> dict[str, Any]:
    env = {**os.environ, **payload.env, "STITCHWORK_JOB_ID": str(ctx.job.id)}
    tail = OutputTail(payload.output_tail_chars)
    try:
        run = await run_process(
            payload.command,
            cwd=payload.cwd,
            env=env,
            on_output=_ProgressFilter(ctx, step, tail).feed,
            timeout_s=payload.timeout_s,
            stop=ctx.stop_requested,
            tail_chars=0,  # the tail kept here leaves out the progress lines
        )
    except ProcessStartError as exc:
        raise JobFailed(f"could not start command: {exc.cause}", retryable=False) from exc

    result = {
        "exit_code": run.returncode,
        "output_tail": tail.text(),
        "duration_s": round(run.duration_s, 3),
    }
    if run.timed_out:
        raise JobFailed(
            f"command timed out after {payload.timeout_s:g}s", result={**result, "timed_out": True}
        )
    if run.stopped:
        step.skip("stopped on request")
        return {**result, "stopped": True}
    if run.returncode != 0:
        raise JobFailed(f"command exited with code {run.returncode}", result=result)
    return result


class _ProgressFilter:
    """Pick ``::progress::NN`` lines out of a command's output and pass everything else on.

    ``run_process`` delivers whole lines; only a chunk's unterminated last piece (the output's
    last line, or part of an endless line) is never a progress line.
    """

    def __init__(self, ctx: JobContext, step: StepHandle, tail: OutputTail) -> None:
        self._ctx = ctx
        self._step = step
        self._tail = tail

    async def feed(self, text: str) -> None:
        *lines, last = text.split("\n")
        plain: list[str] = []
        for line in lines:
            match = PROGRESS_LINE.match(line.rstrip("\r"))
            if match is None:
                plain.append(line + "\n")
                continue
            await self._emit("".join(plain))
            plain = []
            await self._ctx.progress(int(match.group(1)))
        plain.append(last)
        await self._emit("".join(plain))

    async def _emit(self, text: str) -> None:
        if text:
            self._tail.add(text)
            await self._step.output(text)


async def emit(ctx: JobContext) -> dict[str, Any] | None:
    """Write exactly ``count`` numbered ``step.output`` events, optionally at a fixed rate
    (ordering tests and the fan-out benchmark)."""
    payload = EmitPayload.model_validate(ctx.job.payload)
    async with ctx.step("emit events", phase=StepPhase.EXECUTION, type_=StepType.COMMAND) as step:
        started = time.monotonic()
        sent = 0
        while sent < payload.count:
            if payload.rate_per_s:
                due = started + sent / payload.rate_per_s
                if await ctx.sleep(max(0.0, due - time.monotonic())):
                    break
                batch = 1
            else:
                batch = min(payload.batch, payload.count - sent)
            chunks = [f"{payload.prefix}{i}\n" for i in range(sent + 1, sent + batch + 1)]
            await step.output_now(chunks)
            sent += batch
    return {"emitted": sent}


BUILTIN_HANDLERS: dict[str, Handler] = {
    "shell": shell,
    "noop": noop,
    "sleep": sleep,
    "emit": emit,
}
