"""In-process fan-out: one bounded queue per subscriber, never a blocked publisher."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

import structlog

from stitchwork.bus.base import EventFilter, SubscriptionClosed
from stitchwork.domain.events import Event

log = structlog.get_logger(__name__)

DEFAULT_BUFFER = 10_000
PUBLISHED_MEMORY = 100_000


class MemorySubscription:
    def __init__(self, bus: InProcessBus, event_filter: EventFilter, buffer: int) -> None:
        self.filter = event_filter
        self.buffer = buffer
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=buffer)
        self._closed: str | None = None
        self._last: Event | None = None
        self._wake = asyncio.Event()

    # called by the bus, never awaits
    def offer(self, event: Event) -> None:
        if self._closed is not None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._drop(
                f"slow consumer: {self.buffer} undelivered events; "
                "resume from the last event received"
            )

    def _drop(self, reason: str) -> None:
        self._closed = reason
        # Free the backlog now: a consumer that never reads must not hold memory.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._wake.set()
        self._bus._remove(self)
        log.info("subscriber_dropped", reason=reason)

    def close(self) -> None:
        if self._closed is None:
            self._closed = "closed by subscriber"
            self._bus._remove(self)
            self._wake.set()

    @property
    def closed_reason(self) -> str | None:
        return self._closed

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def get(self, timeout_s: float | None = None) -> Event | None:
        while True:
            if not self._queue.empty():
                self._last = self._queue.get_nowait()
                return self._last
            if self._closed is not None:
                raise SubscriptionClosed(self._closed, self._last)
            self._wake.clear()
            getter = asyncio.ensure_future(self._queue.get())
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                done, _ = await asyncio.wait(
                    {getter, waker}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waker.cancel()
                if not getter.done():
                    getter.cancel()
            if getter in done and not getter.cancelled():
                self._last = getter.result()
                return self._last
            if not done:
                return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                event = await self.get()
            except SubscriptionClosed:
                if self._closed == "closed by subscriber":
                    return
                raise
            if event is not None:
                yield event


class InProcessBus:
    def __init__(self, default_buffer: int = DEFAULT_BUFFER) -> None:
        self.default_buffer = default_buffer
        self._subscribers: list[MemorySubscription] = []
        self.closed = False
        self._published: OrderedDict[int, None] = OrderedDict()  # recent ids, for the tailer

    def close(self, reason: str = "the server is shutting down") -> None:
        """End every subscription (streams finish their responses) and refuse new ones."""
        self.closed = True
        for subscriber in list(self._subscribers):
            subscriber._drop(reason)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def was_published(self, event_id: int) -> bool:
        return event_id in self._published

    async def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self._published[event.id] = None
        while len(self._published) > PUBLISHED_MEMORY:
            self._published.popitem(last=False)
        for subscriber in list(self._subscribers):
            try:
                for event in events:
                    if subscriber.filter.matches(event):
                        subscriber.offer(event)
            except Exception as exc:  # one broken subscriber must not stop the others
                log.exception("subscriber_failed")
                with contextlib.suppress(Exception):
                    subscriber._drop(f"subscriber failed: {type(exc).__name__}: {exc}")

    def subscribe(
        self, event_filter: EventFilter, *, buffer: int | None = None
    ) -> MemorySubscription:
        subscription = MemorySubscription(self, event_filter, buffer or self.default_buffer)
        if self.closed:
            subscription._closed = "the server is shutting down"
        else:
            self._subscribers.append(subscription)
        return subscription

    def _remove(self, subscription: MemorySubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(subscription)
