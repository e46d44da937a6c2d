"""Built-in job handlers: ``shell``, ``noop``, ``sleep`` and ``emit``."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import shlex
import signal
import time
from collections import deque
from typing import Any

from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.runtime.context import Handler, JobContext, JobFailed, StepHandle
from stitchwork.services.job_types import EmitPayload, ShellPayload, SleepPayload

PROGRESS_LINE = re.compile(rb"^::progress::\s*(\d{1,3})\s*$")
KILL_GRACE_S = 2.0
EXIT_POLL_S = 0.02
READ_CHUNK = 65_536


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


class _Tail:
    """The last ``limit`` characters of a stream, kept in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[str] = deque()
        self._size = 0

    def add(self, text: str) -> None:
        if not self.limit:
            return
        self._chunks.append(text)
        self._size += len(text)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return "".join(self._chunks)[-self.limit :] if self.limit else ""


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
    started = time.monotonic()
    common: dict[str, Any] = {
        "stdout": asyncio.subprocess.PIPE,
        "stderr": asyncio.subprocess.STDOUT,
        "stdin": asyncio.subprocess.DEVNULL,
        "cwd": payload.cwd,
        "env": env,
        "start_new_session": True,
    }
    try:
        if isinstance(payload.command, str):
            proc = await asyncio.create_subprocess_shell(payload.command, **common)
        else:
            proc = await asyncio.create_subprocess_exec(*payload.command, **common)
    except OSError as exc:
        raise JobFailed(f"could not start command: {exc}", retryable=False) from exc

    tail = _Tail(payload.output_tail_chars)
    pump_task = asyncio.create_task(_pump(proc, ctx, step, tail))
    stop_task = asyncio.create_task(ctx.stop_requested.wait())
    exit_task = asyncio.create_task(_exited(proc))
    reason: str | None = None
    try:
        done, _ = await asyncio.wait(
            {exit_task, stop_task}, timeout=payload.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if exit_task not in done:
            reason = "stopped" if stop_task in done else "timed_out"
        # The command ended, or must end: nothing of its process group may outlive it.
        await _kill_group(proc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump_task), KILL_GRACE_S)
    finally:
        for task in (pump_task, stop_task, exit_task):
            task.cancel()
        if proc.returncode is None:  # the worker cancelled us: leave nothing behind
            await _kill_group(proc)

    result = {
        "exit_code": proc.returncode,
        "output_tail": tail.text(),
        "duration_s": round(time.monotonic() - started, 3),
    }
    if reason == "timed_out":
        raise JobFailed(
            f"command timed out after {payload.timeout_s:g}s", result={**result, "timed_out": True}
        )
    if reason == "stopped":
        step.skip("stopped on request")
        return {**result, "stopped": True}
    if proc.returncode != 0:
        raise JobFailed(f"command exited with code {proc.returncode}", result=result)
    return result


async def _pump(
    proc: asyncio.subprocess.Process, ctx: JobContext, step: StepHandle, tail: _Tail
) -> None:
    """Read raw chunks (a line of any length cannot break the reader), pick out
    ``::progress::NN`` lines, and pass everything else on as output."""
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = b""

    async def emit(data: bytes, final: bool = False) -> None:
        # NUL is valid UTF-8 but Postgres cannot store it in JSON or text columns.
        text = decoder.decode(data, final).replace("\x00", "\ufffd")
        if text:
            tail.add(text)
            await step.output(text)

    while chunk := await proc.stdout.read(READ_CHUNK):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        plain: list[bytes] = []
        for line in lines:
            match = PROGRESS_LINE.match(line.rstrip(b"\r"))
            if match is None:
                plain.append(line + b"\n")
                continue
            if plain:
                await emit(b"".join(plain))
                plain = []
            await ctx.progress(int(match.group(1)))
        if plain:
            await emit(b"".join(plain))
        if len(pending) > READ_CHUNK:  # an endless line: pass it on without waiting for "\n"
            await emit(pending)
            pending = b""
    await emit(pending, final=True)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Return when the command's own process has exited. ``proc.wait()`` would also wait
    for every process that inherited its stdout, which a background child may hold forever."""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio offers no event for this
        await asyncio.sleep(EXIT_POLL_S)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the group is empty
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_group_gone(proc.pid), KILL_GRACE_S)
            return


async def _group_gone(pgid: int) -> None:
    while _group_alive(pgid):  # noqa: ASYNC110 - no event exists for "a process group emptied"
        await asyncio.sleep(EXIT_POLL_S)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running. Zombies do not count: they are dead,
    and whoever adopted them (often PID 1) reaps them in its own time."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc: fall back to the signal probe, which also sees zombies
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


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
