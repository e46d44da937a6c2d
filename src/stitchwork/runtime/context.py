"""What a job handler gets: the job, tracked steps, output and progress reporting, and a stop
signal.

    async def handler(ctx: JobContext) -> dict | None:
        async with ctx.step("Running tests", phase=StepPhase.VALIDATION) as step:
            await ctx.output("collected 12 items\\n")
            await ctx.progress(50)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog

from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import Job
from stitchwork.domain.steps import Step, StepPhase, StepStatus, StepType
from stitchwork.runtime.output import OutputStream
from stitchwork.storage.steps import JobLost, SqlStepStore

ProgressSink = Callable[[int], Awaitable[bool]]

PROGRESS_MIN_INTERVAL_S = 0.2


class JobFailed(Exception):
    """Raised by a handler for an expected failure; ``result`` is stored with the job."""

    def __init__(
        self, message: str, *, result: dict[str, Any] | None = None, retryable: bool = True
    ) -> None:
        super().__init__(message)
        self.result = result
        self.retryable = retryable


class StepHandle:
    """An open step: its output, token usage and other events go to this step."""

    def __init__(self, ctx: JobContext, step: Step) -> None:
        self.step = step
        self._ctx = ctx
        self._skip_reason: str | None = None
        self.stream = OutputStream(self._write_output, on_lost=ctx.stop_requested.set)

    @property
    def id(self) -> Any:
        return self.step.id

    async def _write_output(self, chunk: str, dropped: int) -> None:
        await self._ctx._steps.append_output(
            self.step.id, self._ctx.worker_id, chunk, dropped_chars=dropped
        )

    async def output(self, text: str) -> None:
        """Buffered: written as ``step.output`` events at most 10 times a second."""
        await self.stream.write(text)

    async def output_now(self, chunks: list[str]) -> None:
        """Write each chunk as its own ``step.output`` event at once, in one transaction,
        bypassing the rate limit (for handlers that pace themselves)."""
        await self.stream.close()  # buffered text first, to keep the order
        self.stream = OutputStream(self._write_output, on_lost=self._ctx.stop_requested.set)
        await self._ctx._steps.append_outputs(self.step.id, self._ctx.worker_id, chunks)

    async def tokens(self, tokens_input: int, tokens_output: int) -> None:
        """Token usage of an ``ai_action`` step (``ai.tokens_used``)."""
        self.step = await self._ctx._steps.record_tokens(
            self.step.id, self._ctx.worker_id, tokens_input, tokens_output
        )

    async def event(self, type_: EventType, payload: dict[str, Any]) -> None:
        """Another event about this step, e.g. ``ai.tool_called``."""
        await self._ctx._steps.record_step_event(self.step.id, self._ctx.worker_id, type_, payload)

    def skip(self, reason: str) -> None:
        """End the step as ``skipped`` (instead of ``completed``) when its block exits."""
        self._skip_reason = reason


class JobContext:
    def __init__(
        self,
        job: Job,
        progress_sink: ProgressSink,
        *,
        steps: SqlStepStore | None = None,
        worker_id: str = "",
        on_step_end: Callable[[StepType, StepStatus, float], None] | None = None,
        landing: Callable[[bool], Awaitable[bool]] | None = None,
    ) -> None:
        self.job = job
        self.worker_id = worker_id
        self._on_step_end = on_step_end
        self._landing = landing
        self.stop_requested = asyncio.Event()
        self.log = structlog.get_logger("stitchwork.job").bind(
            job_id=str(job.id), job_type=job.type, attempt=job.attempt
        )
        self._sink = progress_sink
        self._steps_store = steps
        self._open: list[StepHandle] = []
        self._last_percent = -1
        self._last_sent = 0.0
        self._pending_percent: int | None = None
        self._trailing: asyncio.Task[None] | None = None

    @property
    def _steps(self) -> SqlStepStore:
        if self._steps_store is None:
            raise RuntimeError("this context records no steps (no step store given)")
        return self._steps_store

    async def begin_landing(self) -> None:
        """Record that this attempt is about to move its target branch (see
        ``SqlJobStore.mark_landing``). Raises ``JobLost`` when the job is no longer this
        worker's: then it must not land anything."""
        await self._mark_landing(True)

    async def end_landing(self) -> None:
        """Record that the change is known not to have landed (the target was checked)."""
        await self._mark_landing(False)

    async def _mark_landing(self, landing: bool) -> None:
        if self._landing is not None and not await self._landing(landing):
            raise JobLost(
                f"job {self.job.id} is no longer running under worker {self.worker_id}",
                job_id=str(self.job.id),
            )

    # -- progress ----------------------------------------------------------------------------

    async def progress(self, percent: int) -> None:
        """Report job progress (0-100). Updates closer than 200 ms apart are coalesced, so a
        chatty handler cannot flood the store; the latest value is always written in the end."""
        percent = max(0, min(100, int(percent)))
        if percent in (self._last_percent, self._pending_percent):
            return
        wait = PROGRESS_MIN_INTERVAL_S - (time.monotonic() - self._last_sent)
        if percent == 100 or wait <= 0:
            self._pending_percent = None
            await self._send(percent)
            return
        self._pending_percent = percent
        if self._trailing is None or self._trailing.done():
            self._trailing = asyncio.create_task(self._send_later(wait))

    async def _send(self, percent: int) -> None:
        self._last_percent, self._last_sent = percent, time.monotonic()
        await self._sink(percent)

    async def _send_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self._pending_percent is not None:
            percent, self._pending_percent = self._pending_percent, None
            await self._send(percent)

    # -- steps -------------------------------------------------------------------------------

    @asynccontextmanager
    async def step(
        self,
        name: str,
        *,
        phase: StepPhase = StepPhase.EXECUTION,
        type_: StepType = StepType.COMMAND,
    ) -> AsyncIterator[StepHandle]:
        """A tracked step: ``step.started`` on entry; ``step.completed`` on a normal exit,
        ``step.failed`` (with the error) when the block raises, ``step.skipped`` after
        ``handle.skip(reason)``."""
        step = await self._steps.add_step(
            self.job.id, self.worker_id, name=name, phase=phase, type_=type_
        )
        handle = StepHandle(self, step)
        self._open.append(handle)
        try:
            yield handle
        except BaseException as exc:
            error = "stopped" if isinstance(exc, asyncio.CancelledError) else str(exc) or repr(exc)
            with contextlib.suppress(JobLost):
                await asyncio.shield(self._finish(handle, StepStatus.FAILED, error=error))
            raise
        else:
            if handle._skip_reason is not None:
                await self._finish(handle, StepStatus.SKIPPED, reason=handle._skip_reason)
            else:
                await self._finish(handle, StepStatus.COMPLETED)
        finally:
            self._open.remove(handle)

    async def _finish(
        self,
        handle: StepHandle,
        status: StepStatus,
        *,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        await handle.stream.close()
        handle.step = await self._steps.finish_step(
            handle.step.id, self.worker_id, status, error=error, reason=reason
        )
        if self._on_step_end is not None and handle.step.duration_s is not None:
            self._on_step_end(handle.step.type, status, handle.step.duration_s)

    def _current(self) -> StepHandle:
        if not self._open:
            raise RuntimeError("no open step: use `async with ctx.step(...)` first")
        return self._open[-1]

    async def output(self, text: str) -> None:
        """Output of the innermost open step."""
        await self._current().output(text)

    async def tokens(self, tokens_input: int, tokens_output: int) -> None:
        """Token usage of the innermost open step (an ``ai_action`` step)."""
        await self._current().tokens(tokens_input, tokens_output)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop; returns True if a stop was requested."""
        try:
            # asyncio.timeout keeps a cancellation that races the stop flag (wait_for may not)
            async with asyncio.timeout(seconds):
                await self.stop_requested.wait()
        except TimeoutError:
            return False
        return True


Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]
