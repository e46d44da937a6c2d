"""Built-in job handlers: ``shell``, ``noop`` and ``sleep``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections import deque
from typing import Any

from stitchwork.runtime.context import Handler, JobContext, JobFailed
from stitchwork.services.job_types import ShellPayload, SleepPayload

PROGRESS_LINE = re.compile(rb"^::progress::\s*(\d{1,3})\s*$")
KILL_GRACE_S = 2.0


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
    """Run the command in its own process group; stop the whole group on timeout or cancel."""
    payload = ShellPayload.model_validate(ctx.job.payload)
    env = {**os.environ, **payload.env, "STITCHWORK_JOB_ID": str(ctx.job.id)}
    started = time.monotonic()
    try:
        if isinstance(payload.command, str):
            proc = await asyncio.create_subprocess_shell(
                payload.command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=payload.cwd,
                env=env,
                start_new_session=True,
            )
        else:
            proc = await asyncio.create_subprocess_exec(
                *payload.command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=payload.cwd,
                env=env,
                start_new_session=True,
            )
    except OSError as exc:
        raise JobFailed(f"could not start command: {exc}", retryable=False) from exc

    tail = _Tail(payload.output_tail_chars)

    async def pump() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            match = PROGRESS_LINE.match(line.rstrip(b"\r\n"))
            if match:
                await ctx.progress(int(match.group(1)))
            else:
                # NUL is valid UTF-8 but Postgres cannot store it in JSON or text columns.
                tail.add(line.decode(errors="replace").replace("\x00", "\ufffd"))

    pump_task = asyncio.create_task(pump())
    stop_task = asyncio.create_task(ctx.stop_requested.wait())
    exit_task = asyncio.create_task(proc.wait())
    reason: str | None = None
    try:
        done, _ = await asyncio.wait(
            {exit_task, stop_task}, timeout=payload.timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if exit_task not in done:
            reason = "stopped" if stop_task in done else "timed_out"
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
        return {**result, "stopped": True}
    if proc.returncode != 0:
        raise JobFailed(f"command exited with code {proc.returncode}", result=result)
    return result


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
            return
        except TimeoutError:
            continue


BUILTIN_HANDLERS: dict[str, Handler] = {"shell": shell, "noop": noop, "sleep": sleep}
