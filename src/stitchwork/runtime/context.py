"""What a job handler gets: the job, a progress reporter and a stop signal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from stitchwork.domain.jobs import Job

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


class JobContext:
    def __init__(self, job: Job, progress_sink: ProgressSink) -> None:
        self.job = job
        self.stop_requested = asyncio.Event()
        self.log = structlog.get_logger("stitchwork.job").bind(
            job_id=str(job.id), job_type=job.type, attempt=job.attempt
        )
        self._sink = progress_sink
        self._last_percent = -1
        self._last_sent = 0.0

    async def progress(self, percent: int) -> None:
        """Report progress (0-100). Unchanged values and updates closer than 200 ms apart are
        coalesced, so a chatty handler cannot flood the store; 100 is always sent."""
        percent = max(0, min(100, int(percent)))
        now = time.monotonic()
        if percent == self._last_percent:
            return
        if percent != 100 and now - self._last_sent < PROGRESS_MIN_INTERVAL_S:
            return
        self._last_percent, self._last_sent = percent, now
        await self._sink(percent)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop; returns True if a stop was requested."""
        try:
            await asyncio.wait_for(self.stop_requested.wait(), seconds)
        except TimeoutError:
            return False
        return True


Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]
