"""Relays: how events committed in one process reach the buses of the others.

Every process has its own ``InProcessBus``. A relay, chosen by ``bus_url``, connects them:

- ``''`` / ``db://`` (the default, works with SQLite): each API process tails the database
  (``EventTailer``); processes send nothing.
- ``redis://`` (``bus/redis.py``): events are published on a Redis pub/sub channel.
- ``postgresql://`` (``bus/postgres.py``): event ids go out with ``NOTIFY``; receivers read
  the events by id.

A relay (a) sends what its process committed, from a buffer drained by its own task, so
publishing never waits for the remote, and (b) receives what the others committed and
publishes it into the local bus once (ids the bus already published are skipped). Pub/sub
delivery is at most once, so a receiver catches up from the database, the source of truth,
whenever it (re)connects and every ``check_interval_s``; a job (or execution) whose ``seq``
skips ahead has the gap read from the database before the event is published. Connections are
retried with backoff and ``status()`` reports them (``/api/v1/health``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from uuid import UUID

import structlog

from stitchwork.bus.base import EventBus, EventFilter, Subscription
from stitchwork.domain.events import Event
from stitchwork.errors import ConfigError

log = structlog.get_logger(__name__)

# Ids are handed out before commit, so on Postgres a transaction can commit an id below one
# already read. Re-reading this many ids behind the newest covers that; what was already
# published is skipped.
LOOKBACK_IDS = 200
PAGE = 1000
MAX_BATCH = 500  # events per message sent
MAX_PENDING = 100_000  # unsent events kept while the remote is away; older ones are dropped
GAP_FILL_MAX = 1000  # a longer gap is left to the subscribers' own database reads
TRACKED_OWNERS = 10_000  # jobs and executions whose last seq is remembered
CHECK_INTERVALS_PER_TAIL = 5


class LocalBus(Protocol):
    """What a relay publishes into: this process's ``InProcessBus``."""

    def was_published(self, event_id: int) -> bool: ...

    async def publish(self, events: Sequence[Event]) -> None: ...


class TailSource(Protocol):
    async def last_event_id(self) -> int: ...

    async def list_events_since(self, after_id: int, *, limit: int = 1000) -> list[Event]: ...


class EventLog(TailSource, Protocol):
    """The database reads a relay needs (``storage/event_log.py``)."""

    async def list_event_ids_since(self, after_id: int, *, limit: int = 1000) -> list[int]: ...

    async def find_events(self, ids: Sequence[int]) -> list[Event]: ...

    async def list_owner_events(
        self,
        *,
        job_id: UUID | None = None,
        execution_id: UUID | None = None,
        after_seq: int,
        until_seq: int,
        limit: int = 1000,
    ) -> list[Event]: ...


class EventRelay(Protocol):
    @property
    def backend(self) -> str:
        """``db``, ``redis`` or ``postgres``."""
        ...

    @property
    def sends(self) -> bool:
        """False: ``send`` does nothing and the writer can publish to the local bus directly."""
        ...

    def send(self, events: Sequence[Event]) -> None:
        """Queue committed events for the other processes. Never waits."""
        ...

    async def start(self) -> None:
        """Start sending (in the background: an absent remote is retried, never waited for)."""
        ...

    async def receive(self) -> None:
        """Bring the other processes' events into the local bus until cancelled (API
        processes run this; workers only send)."""
        ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class RelayBus:
    """The ``EventBus`` the event writer publishes to: the local bus, then the relay."""

    def __init__(self, local: EventBus, relay: EventRelay) -> None:
        self.local = local
        self.relay = relay

    async def publish(self, events: Sequence[Event]) -> None:
        await self.local.publish(events)
        self.relay.send(events)

    def subscribe(self, event_filter: EventFilter, *, buffer: int | None = None) -> Subscription:
        return self.local.subscribe(event_filter, buffer=buffer)


@dataclass
class LinkState:
    """One connection of a relay (sending or receiving), as health reports show it."""

    active: bool = False
    connected: bool = False
    last_error: str | None = None
    last_error_at: float | None = None  # unix time
    reconnects: int = 0
    _was_connected: bool = field(default=False, repr=False)

    def up(self) -> None:
        if not self.connected:
            if self._was_connected:
                self.reconnects += 1
            self.connected = self._was_connected = True

    def down(self, exc: BaseException) -> None:
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.last_error_at = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def links_status(backend: str, target: str, links: dict[str, LinkState]) -> dict[str, Any]:
    """The common part of every relay's ``status()``. ``connected`` is true when every link
    in use is connected (a process that neither sends nor receives has nothing to lose)."""
    active = [link for link in links.values() if link.active]
    failed = [link for link in links.values() if link.last_error_at is not None]
    latest = max(failed, key=lambda link: link.last_error_at or 0.0, default=None)
    return {
        "backend": backend,
        "target": target,
        "connected": all(link.connected for link in active),
        "last_error": latest.last_error if latest else None,
        "reconnects": sum(link.reconnects for link in links.values()),
        **{role: link.as_dict() for role, link in links.items()},
    }


class Backoff:
    """Exponential delays with jitter between reconnection attempts."""

    def __init__(self, base_s: float = 0.05, max_s: float = 5.0) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.failures = 0

    def next_s(self) -> float:
        delay = min(self.max_s, self.base_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return float(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not security

    def reset(self) -> None:
        self.failures = 0


class SeqGaps:
    """The last seq seen of each job and execution; events whose seq skips ahead are given
    the skipped range, read from the database, in front of them.

    Ids are handed out before commit, so a big transaction can commit ids far below some
    already read: a tail or a catch-up then sees the end of it first. Filling by seq, per
    owner, puts every event back in order whatever the ids did."""

    def __init__(self, log_: EventLog) -> None:
        self.log = log_
        self._last: OrderedDict[UUID, int] = OrderedDict()

    async def with_gaps(self, events: Sequence[Event]) -> tuple[list[Event], set[int]]:
        """``events`` with each gap in front of the event that revealed it, and the ids read
        to fill them."""
        out: list[Event] = []
        filled: set[int] = set()
        for event in events:
            owner = event.job_id or event.execution_id
            last = self._last.get(owner) if owner is not None else None
            if last is not None and event.seq > last + 1:
                gap = await self._fill(event, last)
                filled.update(e.id for e in gap)
                out += gap
            out.append(event)
            self.note((event,))
        return out, filled

    async def _fill(self, event: Event, last: int) -> list[Event]:
        until = min(event.seq - 1, last + GAP_FILL_MAX)
        if event.job_id is not None:
            return await self.log.list_owner_events(
                job_id=event.job_id, after_seq=last, until_seq=until, limit=GAP_FILL_MAX
            )
        return await self.log.list_owner_events(
            execution_id=event.execution_id, after_seq=last, until_seq=until
        )

    def note(self, events: Sequence[Event]) -> None:
        """Remember the last seq seen of each job or execution (local or received)."""
        tracked = self._last
        for event in events:
            owner = event.job_id or event.execution_id
            if owner is None:
                continue
            if event.seq > tracked.get(owner, 0):
                tracked[owner] = event.seq
            tracked.move_to_end(owner)
        while len(tracked) > TRACKED_OWNERS:
            tracked.popitem(last=False)


def unpublished(local: LocalBus, events: Sequence[Event]) -> list[Event]:
    """Those of ``events`` the local bus has not published, each once."""
    seen: set[int] = set()
    out: list[Event] = []
    for event in events:
        if event.id not in seen and not local.was_published(event.id):
            seen.add(event.id)
            out.append(event)
    return out


class EventTailer:
    """One database read per interval for the whole process, however many streams are open:
    events written by a separate ``stitchwork worker`` reach SSE and WebSocket clients within
    about ``interval_s``. Events this process published itself are not published twice."""

    def __init__(
        self, store: TailSource, bus: LocalBus, *, interval_s: float, gaps: SeqGaps | None = None
    ) -> None:
        self.store = store
        self.bus = bus
        self.interval_s = interval_s
        self.gaps = gaps
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
            if fresh and self.gaps is not None:
                # Re-checked: the bus may have published some while the gaps were read.
                fresh = unpublished(self.bus, (await self.gaps.with_gaps(fresh))[0])
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


class DbTailRelay:
    """The default: nothing is sent; each receiving process tails the database."""

    backend = "db"
    sends = False

    def __init__(self, local: LocalBus, log_: EventLog, *, interval_s: float) -> None:
        self.tailer = EventTailer(log_, local, interval_s=interval_s, gaps=SeqGaps(log_))
        self.receiving = LinkState()

    def send(self, events: Sequence[Event]) -> None:
        """Nothing to send: the database is the channel."""

    async def start(self) -> None:
        """Nothing to start: receiving is ``receive``'s loop."""

    async def receive(self) -> None:
        interval_s = self.tailer.interval_s
        backoff = Backoff(base_s=interval_s, max_s=max(interval_s, 30.0))
        self.receiving.active = True
        try:
            while True:
                try:
                    await self.tailer.tail_once()
                    self.receiving.up()
                    backoff.reset()
                    delay = interval_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.receiving.down(exc)
                    log.warning("event_tail_failed", error=self.receiving.last_error)
                    delay = backoff.next_s()
                await asyncio.sleep(delay)
        finally:
            self.receiving.active = self.receiving.connected = False

    async def close(self) -> None:
        """Nothing to close: the engine owns the database."""

    def status(self) -> dict[str, Any]:
        out = links_status(self.backend, "database", {"receive": self.receiving})
        return {**out, "interval_s": self.tailer.interval_s}


def create_relay(
    url: str,
    local: LocalBus,
    log_: EventLog,
    *,
    tail_interval_s: float,
    search_path: str | None = None,
) -> EventRelay:
    """The relay ``bus_url`` names: ``''``/``db://``, ``redis://…`` or ``postgresql://…``.

    The database tail reads every ``tail_interval_s``; the pub/sub relays check their
    connections and catch up from the database (their safety net) every 5 times that.
    """
    check_interval_s = CHECK_INTERVALS_PER_TAIL * tail_interval_s
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not url.strip() or (scheme == "db" and sep and rest.strip("/") == ""):
        return DbTailRelay(local, log_, interval_s=tail_interval_s)
    if sep and scheme in {"redis", "rediss"}:
        from stitchwork.bus.redis import RedisRelay

        return RedisRelay(url.strip(), local, log_, check_interval_s=check_interval_s)
    if sep and scheme in {"postgresql", "postgres", "postgresql+asyncpg"}:
        from stitchwork.bus.postgres import PostgresRelay

        return PostgresRelay(
            url.strip(), local, log_, search_path=search_path, check_interval_s=check_interval_s
        )
    raise ConfigError(
        f"unsupported bus_url scheme {scheme!r}: use '' or db:// (database tail), "
        "redis://host:port/db "
        "(Redis pub/sub) or postgresql://user@host/db (LISTEN/NOTIFY)",
        field="bus_url",
    )
