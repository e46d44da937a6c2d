"""An execution's own events (``execution.*``, ``task.*``, ``lock.contended``) as a stream, by
the same rules as a job's: subscribe, backfill from the database, de-duplicate by ``seq``,
re-read gaps, and end with a completion once the execution is terminal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from stitchwork.api.streaming import PING, Ping
from stitchwork.bus.base import EventFilter, SubscriptionClosed
from stitchwork.domain.events import Event
from stitchwork.domain.executions import TERMINAL_EXECUTION_STATUSES
from stitchwork.runtime.engine import Engine

BACKFILL_PAGE = 1000
_TERMINAL_EVENTS = frozenset({"execution.completed", "execution.failed", "execution.aborted"})


@dataclass(frozen=True, slots=True)
class ExecutionComplete:
    """The execution ended; the stream ends."""

    execution_id: UUID
    status: str


ExecutionItem = Event | Ping | ExecutionComplete


async def _pages(engine: Engine, execution_id: UUID, after: int) -> AsyncIterator[list[Event]]:
    while True:
        page = await engine.executions.store.list_events(
            execution_id, after=after, limit=BACKFILL_PAGE
        )
        if page:
            after = page[-1].seq
            yield page
        if len(page) < BACKFILL_PAGE:
            return


async def execution_event_batches(
    engine: Engine, execution_id: UUID, *, after_seq: int = 0, ping_s: float
) -> AsyncIterator[list[ExecutionItem]]:
    """The execution's events with ``seq > after_seq`` in order, then ``ExecutionComplete``;
    in batches of what was ready together."""
    last = after_seq
    subscription = engine.bus.subscribe(EventFilter(execution_id=execution_id))
    try:
        while True:
            async for page in _pages(engine, execution_id, last):
                last = page[-1].seq
                yield list(page)
            async with engine.db.read() as conn:
                progress = await engine.executions.store.progress(conn, execution_id)
            if progress is None:
                return
            status, last_seq = progress
            if status in TERMINAL_EXECUTION_STATUSES and last >= last_seq:
                yield [ExecutionComplete(execution_id, status.value)]
                return
            try:
                while True:
                    events = await subscription.get_batch(timeout_s=ping_s)
                    if not events:
                        yield [PING]
                        break  # idle: re-read the database (a safety net) and look again
                    out: list[ExecutionItem] = []
                    gap = ended = False
                    for event in events:
                        if event.job_id is not None or event.seq <= last:
                            continue
                        if event.seq > last + 1:
                            gap = True  # read the missing events from the database
                            break
                        last = event.seq
                        out.append(event)
                        ended = ended or event.type in _TERMINAL_EVENTS
                    if out:
                        yield out
                    if gap or ended:
                        break
            except SubscriptionClosed:
                # Dropped as a slow consumer: subscribe again, then catch up from the database.
                subscription.close()
                subscription = engine.bus.subscribe(EventFilter(execution_id=execution_id))
    finally:
        subscription.close()
