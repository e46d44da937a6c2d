"""Event streams for SSE and WebSocket clients, with nothing lost or doubled.

Subscribe first, then backfill from the database, then de-duplicate: an event committed
between the backfill query and the first live event is either in the backfill or arrives live,
and is delivered once either way. A live event whose ``seq`` skips ahead makes the stream
re-read the gap from the database; a subscription the bus dropped (slow consumer) is replaced
and the stream catches up from the database. So delivery order is always ``seq`` order.

Streams come in batches (whatever was ready together, written at once). A job stream whose
socket can be written without waiting (``api/direct.py``) also ``follow``s: while it waits,
the bus hands it live events that continue its ``seq`` and they are written there and then,
without waking the stream's task; anything else (a gap, the job's end, a full socket) goes the
ordinary way, and the stream's position is the same either way.

Events committed by other processes (a separate ``stitchwork worker``) reach this process's bus
through the relay ``bus_url`` selects (``bus/relay.py``): by default the database tail (one read
per ``event_tail_interval`` for the whole process, whatever the number of streams), or Redis
pub/sub or Postgres LISTEN/NOTIFY. Whatever a relay misses shows up here as a gap or at the
idle re-read, and is read from the database.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from stitchwork.bus.base import EventFilter, Subscription, SubscriptionClosed
from stitchwork.domain.events import TERMINAL_JOB_EVENTS, Event
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
PING = Ping()


class JobEvents:
    """One job's events for one stream: ``seq > after_seq``, in seq order, each once, then
    ``Complete``; in batches of whatever was ready together (a stream writes each at once).

    ``follow(write)`` lets the bus hand live events straight to ``write`` (a sink) while the
    stream waits for them; this object keeps the stream's position either way, and whatever
    the sink cannot take (a gap, the job's end, ``write`` declining) comes out of ``batches``.
    """

    def __init__(
        self,
        engine: Engine,
        job_id: UUID,
        *,
        after_seq: int = 0,
        types: tuple[str, ...] = (),
        ping_s: float,
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.last = after_seq
        self.ping_s = ping_s
        self._match = EventFilter(job_id=job_id, types=types).matches if types else None
        self._write: Callable[[list[Event]], bool] | None = None
        self._subscription: Subscription | None = None

    def follow(self, write: Callable[[list[Event]], bool]) -> None:
        """Live events go to ``write(events)`` without waking the stream; it returns False
        to leave them to ``batches`` (e.g. while its socket must drain). Never awaits."""
        self._write = write
        if self._subscription is not None:
            self._subscription.sink = self._sink

    def _subscribe(self) -> Subscription:
        self._subscription = self.engine.bus.subscribe(EventFilter(job_id=self.job_id))
        if self._write is not None:
            self._subscription.sink = self._sink
        return self._subscription

    def _sink(self, events: list[Event]) -> bool:
        assert self._write is not None
        last = self.last
        out: list[Event] = []
        for event in events:
            seq = event.seq
            if seq <= last:
                continue
            if seq != last + 1 or event.type in TERMINAL_JOB_EVENTS:
                return False  # a gap to read, or the end: the stream's own loop does it
            last = seq
            if self._match is None or self._match(event):
                out.append(event)
        if out and not self._write(out):
            return False
        self.last = last
        return True

    async def batches(self) -> AsyncIterator[list[StreamItem]]:
        engine, job_id = self.engine, self.job_id
        match = self._match
        subscription = self._subscribe()
        try:
            while True:
                async for page in _job_pages(engine, job_id, self.last, None):
                    self.last = page[-1].seq
                    wanted: list[StreamItem] = [e for e in page if match is None or match(e)]
                    if wanted:
                        yield wanted
                job = await engine.store.get_job(job_id)
                if job.status in TERMINAL_JOB_STATUSES and self.last >= job.last_event_seq:
                    yield [Complete(job_id, job.status.value)]
                    return
                try:
                    async for batch in self._live(subscription):
                        out: list[StreamItem] = []
                        for item in batch:
                            if isinstance(item, Ping):
                                out.append(item)
                                continue
                            self.last = item.seq
                            if match is None or match(item):
                                out.append(item)
                            if item.type in TERMINAL_JOB_EVENTS:
                                status = item.payload.get("status", item.type)
                                out.append(Complete(job_id, status))
                                yield out
                                return
                        if out:
                            yield out
                except SubscriptionClosed:
                    if engine.bus.closed:
                        return  # shutting down: end the response; the client resumes elsewhere
                    # Dropped for falling behind: subscribe again and catch up from the database.
                    subscription = self._subscribe()
        finally:
            subscription.close()

    async def _live(self, subscription: Subscription) -> AsyncIterator[Sequence[Event | Ping]]:
        """Live events in seq order, each once; a gap is read from the database."""
        engine, job_id = self.engine, self.job_id
        while True:
            events = await subscription.get_batch(timeout_s=self.ping_s)
            last = self.last  # the sink may have moved it while this waited
            if not events:
                # Idle for a ping interval: also re-read the database, a safety net should an
                # event never reach this process's bus.
                async for page in _job_pages(engine, job_id, last, None):
                    yield page
                yield [PING]
                continue
            out: list[Event | Ping] = []
            for event in events:
                seq = event.seq
                if seq <= last:
                    continue  # already delivered by the backfill
                if seq > last + 1:  # a gap: read it from the database, in order
                    if out:
                        yield out
                        out = []
                    async for page in _job_pages(engine, job_id, last, seq - 1):
                        yield page
                last = seq
                out.append(event)
            if out:
                yield out


async def _job_pages(
    engine: Engine, job_id: UUID, after: int, until: int | None
) -> AsyncIterator[list[Event]]:
    """The job's stored events after seq ``after`` (up to ``until``), a page at a time."""
    while until is None or after < until:
        page = await engine.store.list_events(job_id, after=after, limit=BACKFILL_PAGE)
        full = len(page) == BACKFILL_PAGE
        if until is not None and page and page[-1].seq > until:
            page = [e for e in page if e.seq <= until]
            full = False
        if page:
            after = page[-1].seq
            yield page
        if not full:
            return


async def workspace_event_batches(
    engine: Engine,
    workspace_id: UUID,
    *,
    after_id: int = 0,
    types: tuple[str, ...] = (),
    job_id: UUID | None = None,
    ping_s: float,
) -> AsyncIterator[list[StreamItem]]:
    """Every event of a workspace with a global ``id > after_id`` (optionally one job's or some
    types only), in batches. Never completes. Resume with the ``id`` of the last event
    received."""
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
                if page:
                    cursor = page[-1].id
                fresh: list[StreamItem] = [e for e in page if seen.add(e.id)]
                if fresh:
                    yield fresh
                if len(page) < BACKFILL_PAGE:
                    break
            try:
                while True:
                    live = await subscription.get_batch(timeout_s=ping_s)
                    if not live:
                        yield [PING]
                        continue
                    # Events of different jobs may be published slightly out of id order:
                    # de-duplicate by id instead of dropping whatever is below the last id.
                    new: list[StreamItem] = [e for e in live if e.id > after_id and seen.add(e.id)]
                    if new:
                        yield new
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
