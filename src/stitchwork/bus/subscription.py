"""The subscriptions of the in-process bus (``memory.InProcessBus``): what a subscriber has
pending, waiting for it, handing it to a sink, and being dropped."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import structlog

from stitchwork.bus.base import EventFilter, Sink, SubscriptionClosed
from stitchwork.domain.events import Event

if TYPE_CHECKING:
    from stitchwork.bus.memory import InProcessBus

log = structlog.get_logger(__name__)

CLOSED_BY_SUBSCRIBER = "closed by subscriber"


class JobFeed:
    """One job's live events for its subscribers: ``readers`` (filter: just the job) read the
    shared ``events`` from their own positions; ``filtered`` ones have queues of their own."""

    __slots__ = ("events", "filtered", "min_buffer", "readers", "start")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.start = 0  # the position of events[0] since the feed began
        self.readers: list[MemorySubscription] = []
        self.filtered: list[MemorySubscription] = []
        self.min_buffer = 0  # the smallest buffer of the readers

    def readers_changed(self) -> None:
        self.min_buffer = min((r.buffer for r in self.readers), default=0)
        if not self.readers:
            self.events.clear()

    @property
    def head(self) -> int:
        return self.start + len(self.events)

    def trim(self) -> None:
        """Forget what every reader has read."""
        oldest = min((r._cursor for r in self.readers), default=self.head)
        if oldest > self.start:
            del self.events[: oldest - self.start]
            self.start = oldest


class MemorySubscription:
    def __init__(self, bus: InProcessBus, event_filter: EventFilter, buffer: int) -> None:
        self.filter = event_filter
        self.buffer = buffer
        self._bus = bus
        self._queue: deque[Event] = deque()
        # A reader of its job's feed instead of a queue (set by the bus), at ``_cursor``.
        self._feed: JobFeed | None = None
        self._cursor = 0
        self._closed: str | None = None
        self._last: Event | None = None
        self._waiter: asyncio.Future[None] | None = None
        # The timeout of the current wait. One timer per subscription is re-armed lazily
        # instead of one per wait: a busy subscriber waits many times per second.
        self._timeout_s: float | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.sink: Sink | None = None
        # True when the filter says no more than "this job": the bus's index already did it.
        self.only_job = (
            event_filter.job_id is not None
            and event_filter.execution_id is None
            and event_filter.workspace_id is None
            and not event_filter.types
        )

    # called by the bus, never awaits
    def offer(self, event: Event) -> None:
        self.offer_all((event,))

    def offer_all(self, events: Sequence[Event]) -> None:
        if self._closed is not None or not events:
            return
        if len(self._queue) + len(events) > self.buffer:
            self._drop(
                f"slow consumer: {self.buffer} undelivered events; "
                "resume from the last event received"
            )
            return
        self._queue.extend(events)
        if self._waiter is not None and not self._waiter.done():
            self._bus._wake(self)

    def _wake_now(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deliver(self) -> None:
        """Hand what is pending to the sink while the consumer waits in ``get_batch``; wake
        the consumer instead if there is no sink or the sink declines."""
        waiter = self._waiter
        if waiter is None or waiter.done() or not self.pending:
            return  # the consumer is busy and takes what is pending itself
        if self.sink is not None:
            batch = self._peek()
            try:
                taken = self.sink(batch)
            except Exception:  # the consumer takes the batch instead
                log.exception("subscriber_sink_failed")
                taken = False
            if taken:
                self._advance(batch)
                if self._timeout_s is not None:  # events went out: idle from now on
                    self._deadline = asyncio.get_running_loop().time() + self._timeout_s
                return
        waiter.set_result(None)

    def _leave_feed(self, *, keep_pending: bool) -> None:
        """Stop reading the shared feed; what was pending stays as a queue of its own."""
        if self._feed is not None:
            if keep_pending:
                self._queue = deque(self._peek())
            self._feed = None

    def _drop(self, reason: str) -> None:
        self._closed = reason
        # Free the backlog now: a consumer that never reads must not hold memory.
        self._leave_feed(keep_pending=False)
        self._queue.clear()
        self._stop_timer()
        self._wake_now()
        self._bus._remove(self)
        log.info("subscriber_dropped", reason=reason)

    def close(self) -> None:
        if self._closed is None:
            self._closed = CLOSED_BY_SUBSCRIBER
            self._leave_feed(keep_pending=True)
            self._bus._remove(self)
            self._stop_timer()
            self._wake_now()

    @property
    def closed_reason(self) -> str | None:
        return self._closed

    @property
    def pending(self) -> int:
        feed = self._feed
        return len(self._queue) if feed is None else feed.head - self._cursor

    def _peek(self) -> list[Event]:
        feed = self._feed
        if feed is None:
            return list(self._queue)
        return feed.events[self._cursor - feed.start :]

    def _advance(self, taken: list[Event]) -> None:
        if self._feed is None:
            self._queue.clear()  # taken is all of it: nothing runs between the peek and this
        else:
            self._cursor += len(taken)
        self._last = taken[-1]

    async def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None after ``timeout_s``; raises ``SubscriptionClosed``."""
        if not self.pending:
            await self._wait(timeout_s)
            if not self.pending:
                return None
        feed = self._feed
        if feed is None:
            self._last = self._queue.popleft()
        else:
            self._last = feed.events[self._cursor - feed.start]
            self._cursor += 1
        return self._last

    async def get_batch(self, timeout_s: float | None = None) -> list[Event]:
        """Every pending event (at least one), or ``[]`` after ``timeout_s``; raises
        ``SubscriptionClosed`` once nothing is pending and the subscription closed."""
        if not self.pending:
            await self._wait(timeout_s)
            if not self.pending:
                return []
        batch = self._peek()
        self._advance(batch)
        return batch

    async def _wait(self, timeout_s: float | None) -> None:
        """Until an event is queued, the subscription closes or ``timeout_s`` passed."""
        if self._closed is not None:
            raise SubscriptionClosed(self._closed, self._last)
        if timeout_s is not None and timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        if timeout_s is None:
            self._deadline = float("inf")
        else:
            self._deadline = loop.time() + timeout_s
            if self._timer is None or self._timer.when() > self._deadline:
                self._stop_timer()
                self._timer = loop.call_at(self._deadline, self._on_timer)
        # A wake-up can come late, after its events were taken: then wait on. The deadline
        # moves when a sink delivers for this consumer.
        while not self.pending and self._closed is None:
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if loop.time() >= self._deadline:
                break
        if not self.pending and self._closed is not None:
            raise SubscriptionClosed(self._closed, self._last)

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # nobody waits: the next wait arms a new timer
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._wake_now()
        else:  # armed for an earlier wait; this one waits longer
            self._timer = loop.call_at(self._deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                event = await self.get()
            except SubscriptionClosed:
                if self._closed == CLOSED_BY_SUBSCRIBER:
                    return
                raise
            if event is not None:
                yield event
