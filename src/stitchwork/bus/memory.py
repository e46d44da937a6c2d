"""In-process fan-out: a bounded backlog per subscriber, never a blocked publisher.

Costs are per subscriber, so they are kept small. The subscribers of one job (the streams)
read one shared list of its recent events, each from its own position: a publish appends once
however many subscribers there are, a subscriber more than its buffer behind is dropped, and
the list keeps only what some subscriber has yet to read. Other subscribers have a queue of
their own. A subscriber waiting in ``get_batch`` is woken by resolving one future (no tasks, no
``asyncio.wait``) and takes everything pending at once. With ``flush_interval_s`` the wake-ups
of waiting subscribers are gathered and made together at most that often, so under a busy
stream each subscriber writes several events per wake-up (one socket write instead of several).

A subscription may have a ``sink``: at a flush, while its consumer waits in ``get_batch`` (so
it has written everything before), the queued events go to the sink, which writes them out
without waking the consumer's task at all; what a sink declines (a gap to re-read, the end of a
job, a socket that must drain) wakes the consumer as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from uuid import UUID

import structlog

from stitchwork.bus.base import EventFilter
from stitchwork.bus.subscription import JobFeed, MemorySubscription
from stitchwork.domain.events import Event

__all__ = ["InProcessBus", "MemorySubscription"]

log = structlog.get_logger(__name__)

DEFAULT_BUFFER = 10_000
PUBLISHED_MEMORY = 100_000
DEFAULT_FLUSH_INTERVAL_S = 0.1
DEFAULT_FLUSH_S_PER_SUBSCRIBER = 0.0001
ROUND_SLICE = 100


class InProcessBus:
    """Fan-out within one process.

    Args:
        default_buffer: events a subscriber may have undelivered before it is dropped.
        flush_interval_s: waiting subscribers are woken in rounds at most this often: the
            first event after a quiet interval at once, the events that follow it closely
            together at the end of the interval (adding at most this much latency), so that
            on a busy stream a subscriber takes several events per wake-up. 0: every event
            wakes at once.
        flush_s_per_subscriber: the interval is shorter with few subscribers: this much per
            subscriber (a round costs about a third of that), up to ``flush_interval_s``. With
            1,000 subscribers a round every 0.1 s, with 40 every 4 ms.
    """

    def __init__(
        self,
        default_buffer: int = DEFAULT_BUFFER,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_s_per_subscriber: float = DEFAULT_FLUSH_S_PER_SUBSCRIBER,
    ) -> None:
        self.default_buffer = default_buffer
        self.flush_interval_s = flush_interval_s
        self.flush_s_per_subscriber = flush_s_per_subscriber
        self._by_job: dict[UUID, JobFeed] = {}
        self._others: list[MemorySubscription] = []  # filters without a job
        self.closed = False
        self._published: OrderedDict[int, None] = OrderedDict()  # recent ids, for the tailer
        # Subscribers, or feeds (all their readers), to wake at the next flush, in order.
        self._due: dict[MemorySubscription | JobFeed, None] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")

    def close(self, reason: str = "the server is shutting down") -> None:
        """End every subscription (streams finish their responses) and refuse new ones."""
        self.closed = True
        for subscriber in self._all():
            subscriber._drop(reason)
        if self._flush is not None:
            self._flush.cancel()
        self._wake_due()

    @property
    def subscriber_count(self) -> int:
        feeds = self._by_job.values()
        return len(self._others) + sum(len(f.readers) + len(f.filtered) for f in feeds)

    @property
    def subscribers(self) -> list[MemorySubscription]:
        """The current subscriptions (a copy)."""
        return self._all()

    def was_published(self, event_id: int) -> bool:
        return event_id in self._published

    async def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self._published[event.id] = None
        while len(self._published) > PUBLISHED_MEMORY:
            self._published.popitem(last=False)
        if not events:
            return
        first_job = events[0].job_id
        if all(event.job_id == first_job for event in events):
            groups: list[tuple[UUID | None, Sequence[Event]]] = [(first_job, events)]
        else:  # one pass: a batch of many jobs' events is common (submit_many)
            by_job: dict[UUID | None, list[Event]] = {}
            for event in events:
                by_job.setdefault(event.job_id, []).append(event)
            groups = list(by_job.items())
        for job_id, of_job in groups:
            feed = self._by_job.get(job_id) if job_id is not None else None
            if feed is not None:
                if feed.readers:
                    self._append(feed, of_job)
                if feed.filtered:
                    self._offer(list(feed.filtered), of_job)
        if self._others:
            self._offer(list(self._others), events)

    def _append(self, feed: JobFeed, events: Sequence[Event]) -> None:
        feed.events.extend(events)
        head = feed.head
        # A reader more than its buffer behind is dropped now, as with a queue of its own;
        # looked for only when the feed is that long (it is trimmed at every flush round).
        if head - feed.start > feed.min_buffer:
            for reader in list(feed.readers):
                if head - reader._cursor > reader.buffer:
                    reader._drop(
                        f"slow consumer: {reader.buffer} undelivered events; "
                        "resume from the last event received"
                    )
            feed.trim()
        if feed.readers:
            self._wake(feed)

    def _offer(self, subscribers: list[MemorySubscription], events: Sequence[Event]) -> None:
        for subscriber in subscribers:
            try:
                if subscriber.only_job:
                    subscriber.offer_all(events)
                else:
                    matches = subscriber.filter.matches
                    subscriber.offer_all([event for event in events if matches(event)])
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
        elif event_filter.job_id is not None:
            feed = self._by_job.setdefault(event_filter.job_id, JobFeed())
            if subscription.only_job:
                subscription._feed, subscription._cursor = feed, feed.head
                feed.readers.append(subscription)
                feed.readers_changed()
            else:
                feed.filtered.append(subscription)
        else:
            self._others.append(subscription)
        return subscription

    def _all(self) -> list[MemorySubscription]:
        feeds = self._by_job.values()
        return [*self._others, *(s for f in feeds for s in (*f.readers, *f.filtered))]

    def _remove(self, subscription: MemorySubscription) -> None:
        job_id = subscription.filter.job_id
        feed = self._by_job.get(job_id) if job_id is not None else None
        for subscribers in (self._others,) if feed is None else (feed.readers, feed.filtered):
            with contextlib.suppress(ValueError):
                subscribers.remove(subscription)
        if feed is not None:
            feed.readers_changed()
            if not feed.readers and not feed.filtered:
                del self._by_job[job_id]  # type: ignore[arg-type]
                self._due.pop(feed, None)
        self._due.pop(subscription, None)

    def _wake(self, due: MemorySubscription | JobFeed) -> None:
        if self.flush_interval_s <= 0:
            for subscription in _subscriptions(due):
                _deliver(subscription)
            return
        self._due[due] = None
        if self._flush is None:
            # The first event after a quiet interval goes out at once; the ones that follow
            # it closely wait for the end of the interval and go out together.
            loop = asyncio.get_running_loop()
            per_subscriber = self.flush_s_per_subscriber * self.subscriber_count
            interval = min(self.flush_interval_s, per_subscriber)
            at = max(loop.time(), self._last_flush + interval)
            self._flush = loop.call_at(at, self._wake_due)

    def _wake_due(self) -> None:
        self._flush = None
        due, self._due = list(self._due), {}
        subscriptions = [s for item in due for s in _subscriptions(item)]
        feeds = [item for item in due if isinstance(item, JobFeed)]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closed outside the loop: nobody waits, nothing to write
            for subscription in subscriptions:
                _deliver(subscription)
            return
        self._last_flush = loop.time()
        self._deliver_round(loop, subscriptions, feeds, 0)

    def _deliver_round(
        self,
        loop: asyncio.AbstractEventLoop,
        due: list[MemorySubscription],
        feeds: list[JobFeed],
        start: int,
    ) -> None:
        # A round is delivered a slice per loop iteration, so that the rest of the process
        # (the job producing the events, other requests) runs between slices instead of
        # waiting for a thousand subscribers.
        end = start + ROUND_SLICE
        for subscription in due[start:end]:
            _deliver(subscription)
        if end < len(due):
            loop.call_soon(self._deliver_round, loop, due, feeds, end)
            return
        for feed in feeds:
            feed.trim()


def _subscriptions(due: MemorySubscription | JobFeed) -> list[MemorySubscription]:
    return list(due.readers) if isinstance(due, JobFeed) else [due]


def _deliver(subscription: MemorySubscription) -> None:
    try:
        subscription._deliver()
    except Exception as exc:  # one broken subscriber must not stop the others
        log.exception("subscriber_failed")
        with contextlib.suppress(Exception):
            subscription._drop(f"subscriber failed: {type(exc).__name__}: {exc}")
