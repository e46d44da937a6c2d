"""The event tailer: brings events committed by other processes into this process's bus."""

from __future__ import annotations

import asyncio

import structlog

from stitchwork.bus.memory import InProcessBus
from stitchwork.storage.jobs import SqlJobStore

log = structlog.get_logger(__name__)

# Ids are handed out before commit, so on Postgres a transaction can commit an id below one
# already read. Re-reading this many ids behind the newest covers that; what was already
# published is skipped.
LOOKBACK_IDS = 200
PAGE = 1000


class EventTailer:
    """One database read per interval for the whole process, however many streams are open:
    events written by a separate ``stitchwork worker`` reach SSE and WebSocket clients within
    about ``interval_s``. Events this process published itself are not published twice."""

    def __init__(self, store: SqlJobStore, bus: InProcessBus, *, interval_s: float) -> None:
        self.store = store
        self.bus = bus
        self.interval_s = interval_s
        self.cursor: int | None = None

    async def tail_once(self) -> int:
        """Publish what other processes committed since the last call; returns how many."""
        if self.cursor is None:
            self.cursor = await self.store.last_event_id()
            return 0
        published = 0
        while True:
            page = await self.store.list_events_since(
                max(0, self.cursor - LOOKBACK_IDS), limit=PAGE
            )
            fresh = [e for e in page if not self.bus.was_published(e.id)]
            if fresh:
                await self.bus.publish(fresh)
                published += len(fresh)
            if page:
                self.cursor = max(self.cursor, page[-1].id)
            if len(page) < PAGE:
                return published

    async def run(self) -> None:
        while True:
            try:
                await self.tail_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event_tail_failed")
            await asyncio.sleep(self.interval_s)
