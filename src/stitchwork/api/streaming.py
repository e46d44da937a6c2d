"""Event streams for SSE and WebSocket clients, with nothing lost or doubled.

Subscribe first, then backfill from the database, then de-duplicate: an event committed
between the backfill query and the first live event is either in the backfill or arrives live,
and is delivered once either way. A live event whose ``seq`` skips ahead makes the stream
re-read the gap from the database; a subscription the bus dropped (slow consumer) is replaced
and the stream catches up from the database. So delivery order is always ``seq`` order.

Events committed by other processes (a separate ``stitchwork worker``) reach this process's bus
through the ``EventTailer`` (one database read per ``event_tail_interval`` for the whole
process, whatever the number of streams).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from stitchwork.bus.base import EventFilter, Subscription, SubscriptionClosed
from stitchwork.domain.events import Event
from stitchwork.domain.jobs import TERMINAL_JOB_STATUSES
from stitchwork.runtime.engine import Engine

BACKFILL_PAGE = 1000
RECENT_IDS = 10_000
# Resume points beyond the columns' range would fail in the database, mid-stream.
MAX_SEQ = 2**31 - 1  # job_events.seq is a 32-bit INTEGER
MAX_EVENT_ID = 2**63 - 1  # job_events.id is a BIGINT


@dataclass(frozen=True, slots=True)
class Ping:
    """Nothing happened for a ping interval."""


@dataclass(frozen=True, slots=True)
class Complete:
    """The job reached a terminal state; the stream ends."""

    job_id: UUID
    status: str


StreamItem = Event | Ping | Complete


async def job_events(
    engine: Engine,
    job_id: UUID,
    *,
    after_seq: int = 0,
    types: tuple[str, ...] = (),
    ping_s: float,
) -> AsyncIterator[StreamItem]:
    """Events of one job with ``seq > after_seq`` in seq order, then ``Complete``."""
    match = EventFilter(job_id=job_id, types=types)
    subscription = engine.bus.subscribe(EventFilter(job_id=job_id))
    last = after_seq
    try:
        while True:
            terminal = None
            async for event in _job_backfill(engine, job_id, last, None):
                last = event.seq
                terminal = event if event.is_job_terminal else terminal
                if match.matches(event):
                    yield event
            job = await engine.store.get_job(job_id)
            if job.status in TERMINAL_JOB_STATUSES and last >= job.last_event_seq:
                yield Complete(job_id, job.status.value)
                return
            try:
                async for item in _job_live(engine, subscription, job_id, last, ping_s):
                    if isinstance(item, Event):
                        last = item.seq
                        if match.matches(item):
                            yield item
                        if item.is_job_terminal:
                            yield Complete(job_id, item.payload.get("status", item.type))
                            return
                    else:
                        yield item
            except SubscriptionClosed:
                if engine.bus.closed:
                    return  # shutting down: end the response; the client resumes elsewhere
                # Dropped for falling behind: subscribe again and catch up from the database.
                subscription = engine.bus.subscribe(EventFilter(job_id=job_id))
    finally:
        subscription.close()


async def _job_backfill(
    engine: Engine, job_id: UUID, after: int, until: int | None
) -> AsyncIterator[Event]:
    while until is None or after < until:
        page = await engine.store.list_events(job_id, after=after, limit=BACKFILL_PAGE)
        for event in page:
            if until is not None and event.seq > until:
                return
            after = event.seq
            yield event
        if len(page) < BACKFILL_PAGE:
            return


async def _job_live(
    engine: Engine, subscription: Subscription, job_id: UUID, last: int, ping_s: float
) -> AsyncIterator[StreamItem]:
    while True:
        event = await subscription.get(timeout_s=ping_s)
        if event is None:
            # Idle for a ping interval: also re-read the database, a safety net should an
            # event never reach this process's bus.
            async for missed in _job_backfill(engine, job_id, last, None):
                last = missed.seq
                yield missed
            yield Ping()
            continue
        if event.seq <= last:
            continue  # already delivered by the backfill
        if event.seq > last + 1:  # a gap: read it from the database, in order
            async for missed in _job_backfill(engine, job_id, last, event.seq - 1):
                last = missed.seq
                yield missed
        last = event.seq
        yield event


async def workspace_events(
    engine: Engine,
    workspace_id: UUID,
    *,
    after_id: int = 0,
    types: tuple[str, ...] = (),
    job_id: UUID | None = None,
    ping_s: float,
) -> AsyncIterator[StreamItem]:
    """Every event of a workspace with a global ``id > after_id`` (optionally one job's or some
    types only). Never completes. Resume with the ``id`` of the last event received."""
    event_filter = EventFilter(workspace_id=workspace_id, job_id=job_id, types=types)
    subscription = engine.bus.subscribe(event_filter)
    seen = _RecentIds(RECENT_IDS)
    cursor = after_id
    try:
        while True:
            while True:
                page = await engine.store.list_workspace_events(
                    workspace_id, after_id=cursor, limit=BACKFILL_PAGE, types=types, job_id=job_id
                )
                for event in page:
                    cursor = event.id
                    if seen.add(event.id):
                        yield event
                if len(page) < BACKFILL_PAGE:
                    break
            try:
                while True:
                    live = await subscription.get(timeout_s=ping_s)
                    if live is None:
                        yield Ping()
                    # Events of different jobs may be published slightly out of id order:
                    # de-duplicate by id instead of dropping whatever is below the last id.
                    elif live.id > after_id and seen.add(live.id):
                        yield live
            except SubscriptionClosed:
                if engine.bus.closed:
                    return  # shutting down: end the response; the client resumes elsewhere
                # Dropped for falling behind: subscribe again and catch up from the database;
                # what was already delivered live is skipped by ``seen``.
                subscription = engine.bus.subscribe(event_filter)
                cursor = max(cursor, seen.evicted_up_to)
    finally:
        subscription.close()


class _RecentIds:
    """A bounded set of delivered ids; remembers the highest id it had to forget."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[int, None] = OrderedDict()
        self.evicted_up_to = 0

    def add(self, event_id: int) -> bool:
        """False if the id was delivered already."""
        if event_id in self._ids or event_id <= self.evicted_up_to:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            oldest, _ = self._ids.popitem(last=False)
            self.evicted_up_to = max(self.evicted_up_to, oldest)
        return True
