"""Built-in job handlers: ``shell``, ``noop``, ``sleep`` and ``emit``."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path
from typing import Any

from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.errors import Forbidden
from stitchwork.runner.process import OutputTail, ProcessResult, ProcessStartError, run_process
from stitchwork.runner.sandbox import (
    SANDBOX_TMP,
    Confinement,
    JobConfinement,
    SandboxUnavailable,
)
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


class Shell:
    """The ``shell`` job type: run a command as one tracked step, streaming its output as
    ``step.output`` events.

    The command runs in its own process group. On timeout or cancellation the whole group is
    stopped (SIGTERM, then SIGKILL); when the command itself exits, whatever it left running in
    its group is stopped too, so a job never leaks background processes. It gets a clean
    environment (its ``env`` and the server's ``pass_env``) and runs in the sandbox: the system
    read-only, its ``cwd`` (which must be inside a repository root) writable, a private
    ``/tmp`` (its working directory when it names none).
    """

    def __init__(self, confinement: JobConfinement) -> None:
        self.confinement = confinement

    async def __call__(self, ctx: JobContext) -> dict[str, Any] | None:
        payload = ShellPayload.model_validate(ctx.job.payload)
        label = payload.command if isinstance(payload.command, str) else shlex.join(payload.command)
        async with ctx.step(
            f"$ {label[:150]}", phase=StepPhase.EXECUTION, type_=StepType.COMMAND
        ) as step:
            return await self._run(ctx, step, payload)

    async def _run(
        self, ctx: JobContext, step: StepHandle, payload: ShellPayload
    ) -> dict[str, Any]:
        confinement = self.confinement
        try:
            cwd = None
            if payload.cwd is not None:
                cwd = confinement.inside_roots(payload.cwd, field="payload.cwd")
            confinement.sandbox.check()
        except (Forbidden, SandboxUnavailable) as exc:
            raise JobFailed(str(exc), retryable=False) from exc
        walls = Confinement(writable=(cwd,) if cwd is not None else ())
        tail = OutputTail(payload.output_tail_chars)
        try:
            run = await run_process(
                payload.command,
                cwd=cwd,
                env=confinement.env(payload.env),
                on_output=_ProgressFilter(ctx, step, tail).feed,
                timeout_s=payload.timeout_s,
                stop=ctx.stop_requested,
                tail_chars=0,  # the tail kept here leaves out the progress lines
                wrap=confinement.wrapper(walls, cwd or Path(SANDBOX_TMP)),
            )
        except ProcessStartError as exc:
            raise JobFailed(f"could not start command: {exc.cause}", retryable=False) from exc
        return _shell_result(run, payload, tail, step)


def _shell_result(
    run: ProcessResult, payload: ShellPayload, tail: OutputTail, step: StepHandle
) -> dict[str, Any]:
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


def builtin_handlers(confinement: JobConfinement) -> dict[str, Handler]:
    """The built-in job types' handlers; ``shell`` runs confined by ``confinement``."""
    return {"shell": Shell(confinement), **_UNCONFINED}


_UNCONFINED: dict[str, Handler] = {
    "noop": noop,
    "sleep": sleep,
    "emit": emit,
}
