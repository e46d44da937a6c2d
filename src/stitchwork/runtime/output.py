"""Bounded, rate-limited output: how a chatty process is kept from flooding the event store."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from stitchwork.storage.steps import JobLost

log = structlog.get_logger(__name__)

FLUSH_INTERVAL_S = 0.1
MAX_CHUNK_CHARS = 16_384

Sink = Callable[[str, int], Awaitable[None]]


class OutputStream:
    """Collects text and writes it through ``sink(chunk, dropped_chars)``.

    At most one write per ``interval_s`` and at most ``max_chunk`` characters per write: a
    process printing faster than that keeps its newest output, and the next chunk says how many
    characters were dropped before it. Writes never wait for the database; ``close()`` flushes.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        max_chunk: int = MAX_CHUNK_CHARS,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink
        self.interval_s = interval_s
        self.max_chunk = max_chunk
        self._on_lost = on_lost
        self._parts: list[str] = []
        self._size = 0
        self._dropped = 0
        self._last_flush = 0.0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.lost = False

    async def write(self, text: str) -> None:
        if not text or self.lost or self._closing:
            # A closed stream stays closed: a late write must not start a new flusher.
            return
        self._parts.append(text)
        self._size += len(text)
        if self._size > self.max_chunk:
            joined = "".join(self._parts)
            self._dropped += len(joined) - self.max_chunk
            self._parts, self._size = [joined[-self.max_chunk :]], self.max_chunk
        if self._task is None:
            self._task = asyncio.create_task(self._flusher(), name="output-flusher")
        self._wake.set()

    async def close(self) -> None:
        """Write what is buffered and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        elif self._parts:
            await self._flush()

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self.interval_s - (time.monotonic() - self._last_flush)
            if wait > 0 and not self._closing:
                with contextlib.suppress(TimeoutError):
                    # closing cuts the wait short; new text only accumulates meanwhile
                    await asyncio.wait_for(self._until_closing(), wait)
            if self._parts:
                await self._flush()
            if self._closing and not self._parts:
                return

    async def _until_closing(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()

    async def _flush(self) -> None:
        chunk, dropped = "".join(self._parts), self._dropped
        self._parts, self._size, self._dropped = [], 0, 0
        self._last_flush = time.monotonic()
        if self.lost:
            return
        try:
            await self._sink(chunk, dropped)
        except JobLost:
            self.lost = True
            if self._on_lost is not None:
                self._on_lost()
        except Exception:
            log.exception("output_write_failed", chars=len(chunk))
