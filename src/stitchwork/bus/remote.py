"""The machinery of the relays that use a remote channel (``bus/redis.py``,
``bus/postgres.py``): a send buffer drained by its own task, a receive loop that reconnects
with backoff and catches up from the database, and per-job gap filling. See ``bus/relay.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

import structlog

from stitchwork.bus.relay import (
    LOOKBACK_IDS,
    MAX_BATCH,
    MAX_PENDING,
    PAGE,
    Backoff,
    EventLog,
    LinkState,
    LocalBus,
    SeqGaps,
    links_status,
    unpublished,
)
from stitchwork.domain.events import Event

log = structlog.get_logger(__name__)


class RemoteRelay(ABC):
    """Sending and receiving over a remote channel (Redis, Postgres); adapters say how to
    connect, send a batch, wait for the next one and check a connection."""

    backend: ClassVar[str]
    sends = True

    def __init__(
        self,
        local: LocalBus,
        log_: EventLog,
        *,
        target: str,
        check_interval_s: float = 5.0,
        close_grace_s: float = 2.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.local = local
        self.log = log_
        self.target = target
        self.check_interval_s = check_interval_s
        self.close_grace_s = close_grace_s
        self.max_pending = max_pending
        self.origin = uuid.uuid4().hex  # a process skips what it sent itself
        self.sending = LinkState()
        self.receiving = LinkState()
        self.counts = {"sent": 0, "dropped": 0, "received": 0, "backfilled": 0}
        self.catch_up_error: str | None = None
        self._pending: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._dropping = False
        self._cursor: int | None = None
        self._gaps = SeqGaps(log_)

    # -- adapter hooks -------------------------------------------------------------------------

    @abstractmethod
    async def _open_sender(self) -> None:
        """Connect the sending connection if it is not (raises if it cannot)."""

    @abstractmethod
    async def _send_batch(self, events: list[Event]) -> None: ...

    @abstractmethod
    async def _check_sender(self) -> None:
        """A round trip on the idle sending connection (raises if it is gone)."""

    @abstractmethod
    async def _close_sender(self) -> None: ...

    @abstractmethod
    async def _subscribe(self) -> None:
        """Connect and subscribe; returns once the subscription is in effect."""

    @abstractmethod
    async def _next(self, timeout_s: float) -> list[Event] | None:
        """Other processes' next events, or None when idle for ``timeout_s``; raises when
        the connection is lost."""

    @abstractmethod
    async def _check_receiver(self) -> None: ...

    @abstractmethod
    async def _unsubscribe(self) -> None: ...

    # -- sending -------------------------------------------------------------------------------

    def send(self, events: Sequence[Event]) -> None:
        self._gaps.note(events)
        self._pending.extend(events)
        overflow = len(self._pending) - self.max_pending
        if overflow > 0:  # receivers catch up from the database
            for _ in range(overflow):
                self._pending.popleft()
            self.counts["dropped"] += overflow
            if not self._dropping:  # once per outage, not once per commit
                self._dropping = True
                log.warning(
                    "event_relay_send_dropping", backend=self.backend, kept=len(self._pending)
                )
        self._drained.clear()
        self._wake.set()

    async def start(self) -> None:
        if self._sender is None:
            self.sending.active = True
            self._sender = asyncio.create_task(self._send_loop(), name=f"{self.backend}-relay")

    async def _send_loop(self) -> None:
        backoff = Backoff()
        while not self._closing:
            batch: list[Event] = []
            try:
                await self._open_sender()
                self.sending.up()
                if not self._pending:
                    self._drained.set()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.check_interval_s):
                            await self._wake.wait()
                    if not self._pending:
                        await self._check_sender()
                        continue
                n = min(MAX_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(n)]
                await self._send_batch(batch)
                self.counts["sent"] += n
                self._dropping = False
                backoff.reset()
            except asyncio.CancelledError:
                self._pending.extendleft(reversed(batch))
                raise
            except Exception as exc:
                self._pending.extendleft(reversed(batch))
                self.sending.down(exc)
                log.warning("event_relay_send_failed", backend=self.backend, error=str(exc))
                with contextlib.suppress(Exception):
                    await self._close_sender()
                await asyncio.sleep(backoff.next_s())

    async def close(self) -> None:
        """Send what is pending (for up to ``close_grace_s`` if the remote answers), stop."""
        sender, self._sender = self._sender, None
        if sender is not None:
            if self._pending and self.sending.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.close_grace_s):
                        await self._drained.wait()
            self._closing = True
            sender.cancel()
            done, _ = await asyncio.wait({sender}, timeout=self.close_grace_s)
            if not done:  # a driver call swallowed the cancellation: its connection goes
                with contextlib.suppress(Exception):
                    await self._close_sender()
                await asyncio.wait({sender}, timeout=self.close_grace_s)
            if self._pending:
                log.warning("event_relay_unsent", backend=self.backend, events=len(self._pending))
        with contextlib.suppress(Exception):
            await self._close_sender()
        self.sending.active = self.sending.connected = False

    # -- receiving -----------------------------------------------------------------------------

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        self.receiving.active = True
        try:
            while True:
                try:
                    if self._cursor is None:  # where "now" is: streams backfill the past
                        self._cursor = await self.log.last_event_id()
                    await self._subscribe()
                    await self.catch_up()  # what was missed before the subscription
                    self.receiving.up()
                    backoff.reset()
                    check_at = loop.time() + self.check_interval_s
                    while True:
                        events = await self._next(max(0.0, check_at - loop.time()))
                        if events:
                            await self.deliver(events)
                        if loop.time() >= check_at:  # busy or idle, at every interval
                            if events is None:  # idle: is the connection still there?
                                await self._check_receiver()
                            await self.catch_up()
                            check_at = loop.time() + self.check_interval_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.receiving.down(exc)
                    log.warning("event_relay_receive_failed", backend=self.backend, error=str(exc))
                    with contextlib.suppress(Exception):
                        await self._unsubscribe()
                    await asyncio.sleep(backoff.next_s())
        finally:
            self.receiving.active = self.receiving.connected = False
            with contextlib.suppress(Exception):
                await self._unsubscribe()

    async def catch_up(self) -> int:
        """Publish whatever was committed since the last catch-up and not published here
        (missed while disconnected, or lost in transit); returns how many. A database error
        is recorded and retried at the next check, never fatal to the subscription."""
        if self._cursor is None:
            return 0
        published = 0
        try:
            while True:
                ids = await self.log.list_event_ids_since(
                    max(0, self._cursor - LOOKBACK_IDS), limit=PAGE
                )
                missing = [i for i in ids if not self.local.was_published(i)]
                if missing:
                    found = await self.log.find_events(missing)
                    published += await self.deliver(found, from_database=True)
                if ids:
                    self._cursor = max(self._cursor, ids[-1])
                if len(ids) < PAGE:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.catch_up_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("event_relay_catch_up_failed", backend=self.backend, error=str(exc))
            return published
        self.catch_up_error = None
        return published

    async def deliver(self, events: Sequence[Event], *, from_database: bool = False) -> int:
        """Publish events received from elsewhere into the local bus, each once; a job whose
        seq skips ahead of what this process saw has the gap read from the database first.
        Returns how many were published."""
        received = [e for e in events if not self.local.was_published(e.id)]
        out, filled = await self._gaps.with_gaps(received)
        # Re-checked: the bus may have published some of them while the gap was read.
        fresh = unpublished(self.local, out)
        if fresh:
            await self.local.publish(fresh)
            self.counts["received"] += len(fresh)
            self.counts["backfilled"] += (
                len(fresh) if from_database else sum(e.id in filled for e in fresh)
            )
        return len(fresh)

    def status(self) -> dict[str, Any]:
        links = {"send": self.sending, "receive": self.receiving}
        return {
            **links_status(self.backend, self.target, links),
            "pending": len(self._pending),
            **self.counts,
            "catch_up_error": self.catch_up_error,
        }
