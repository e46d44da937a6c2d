"""Redis pub/sub relay: each process publishes its committed events as JSON on one channel,
``<prefix>:<db>:events`` (``?prefix=`` in ``bus_url``, default ``stitchwork``; pub/sub is not
scoped by database index, so the index is part of the name).

redis-py's pub/sub is at most once: what is published while a subscriber is disconnected is
lost. So the connections never reconnect behind this relay's back (no driver retries): a lost
connection is an error here, retried with backoff, and every (re)subscription is followed by a
catch-up from the database (``RemoteRelay.receive``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import structlog

from stitchwork.bus.relay import EventLog, LocalBus
from stitchwork.bus.remote import RemoteRelay
from stitchwork.domain.events import Event
from stitchwork.errors import ConfigError

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "stitchwork"
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
CONNECT_TIMEOUT_S = 3.0
OP_TIMEOUT_S = 5.0


def encode_events(origin: str, events: Sequence[Event]) -> bytes:
    """One message: ``{"origin": ..., "events": [...]}``, each event as stored."""
    return json.dumps(
        {"origin": origin, "events": [_event_dict(e) for e in events]},
        separators=(",", ":"),
    ).encode()


def decode_events(data: bytes | str) -> tuple[str, list[Event]]:
    """The sender and events of a message; raises ``ValueError`` for anything else."""
    try:
        message = json.loads(data)
        return str(message["origin"]), [_event_of(d) for d in message["events"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an event message: {exc!r}") from exc


def _event_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "job_id": _str(event.job_id),
        "seq": event.seq,
        "type": event.type,
        "actor": event.actor,
        "payload": event.payload,
        "created_at": event.created_at.isoformat(),
        "step_id": _str(event.step_id),
        "execution_id": _str(event.execution_id),
        "workspace_id": _str(event.workspace_id),
    }


def _event_of(d: dict[str, Any]) -> Event:
    return Event(
        id=int(d["id"]),
        job_id=_uuid(d["job_id"]),
        seq=int(d["seq"]),
        type=str(d["type"]),
        actor=str(d["actor"]),
        payload=dict(d["payload"]),
        created_at=datetime.fromisoformat(d["created_at"]),
        step_id=_uuid(d["step_id"]),
        execution_id=_uuid(d["execution_id"]),
        workspace_id=_uuid(d["workspace_id"]),
    )


def _str(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid(value: str | None) -> UUID | None:
    return None if value is None else UUID(value)


def parse_bus_url(url: str) -> tuple[str, str, str]:
    """``(redis url for the driver, channel, url to show)``; ``ConfigError`` if malformed."""
    from redis.asyncio.connection import parse_url

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = dict(query).get("prefix", DEFAULT_PREFIX)
    if not PREFIX_PATTERN.match(prefix):
        raise ConfigError(
            f"invalid bus_url prefix {prefix!r}: letters, digits and _ . : - only",
            field="bus_url",
        )
    driver_url = urlunsplit(parts._replace(query=urlencode([q for q in query if q[0] != "prefix"])))
    try:
        db = int(parse_url(driver_url).get("db", 0))
    except ValueError as exc:
        raise ConfigError(f"invalid bus_url: {exc}", field="bus_url") from exc
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="")
    return driver_url, f"{prefix}:{db}:events", urlunsplit(shown)


class RedisRelay(RemoteRelay):
    backend = "redis"

    def __init__(self, url: str, local: LocalBus, log_: EventLog, **options: Any) -> None:
        try:
            import redis.asyncio  # noqa: F401 - the redis extra
        except ImportError as exc:
            raise ConfigError(
                "bus_url redis:// needs the redis extra: pip install 'stitchwork[redis]'",
                field="bus_url",
            ) from exc
        driver_url, self.channel, shown = parse_bus_url(url)
        super().__init__(local, log_, target=f"{shown} channel {self.channel}", **options)
        self._url = driver_url
        self.client_name = f"stitchwork-bus-{self.origin[:12]}"  # CLIENT LIST shows it
        self._send_client: Any = None
        self._recv_client: Any = None
        self._pubsub: Any = None
        self._reading: asyncio.Task[Any] | None = None
        self._awaiting_pong = False

    def _client(self, role: str, *, socket_timeout_s: float | None = OP_TIMEOUT_S) -> Any:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return Redis.from_url(
            self._url,
            retry=Retry(NoBackoff(), 0),  # a lost connection is reported, never hidden
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=socket_timeout_s,
            client_name=f"{self.client_name}-{role}",
        )

    # -- sending -------------------------------------------------------------------------------

    async def _open_sender(self) -> None:
        if self._send_client is None:
            client = self._client("send")
            try:
                await client.ping()
            except BaseException:
                await client.aclose()
                raise
            self._send_client = client

    async def _send_batch(self, events: list[Event]) -> None:
        await self._send_client.publish(self.channel, encode_events(self.origin, events))

    async def _check_sender(self) -> None:
        await self._send_client.ping()

    async def _close_sender(self) -> None:
        client, self._send_client = self._send_client, None
        if client is not None:
            await client.aclose()

    # -- receiving -----------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        # No socket timeout: the subscription is idle between events; ``_check_receiver``
        # finds a dead connection instead.
        self._recv_client = self._client("recv", socket_timeout_s=None)
        self._pubsub = self._recv_client.pubsub(ignore_subscribe_messages=False)
        self._awaiting_pong = False
        await self._pubsub.subscribe(self.channel)
        # Only once Redis confirmed is the subscription in effect: the catch-up that follows
        # must not start before it, or an event published in between would be missed by both.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OP_TIMEOUT_S
        while (remaining := deadline - loop.time()) > 0:
            message = await self._read(remaining)
            if message is not None and message["type"] == "subscribe":
                return
        raise TimeoutError(f"SUBSCRIBE {self.channel} not confirmed in {OP_TIMEOUT_S}s")

    async def _read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message, or None after ``timeout_s``. The read runs in a task of its own
        that is never cancelled halfway (redis-py's reads can swallow a cancellation, or lose
        part of a reply); a read still running is taken up by the next call."""
        if self._reading is None:
            self._reading = asyncio.create_task(self._pubsub.get_message(timeout=None))
        done, _ = await asyncio.wait({self._reading}, timeout=timeout_s)
        if not done:
            return None
        reading, self._reading = self._reading, None
        message: dict[str, Any] | None = reading.result()
        return message

    async def _next(self, timeout_s: float) -> list[Event] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            message = await self._read(remaining)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                try:
                    origin, events = decode_events(message["data"])
                except ValueError as exc:
                    log.warning("event_relay_bad_message", channel=self.channel, error=str(exc))
                    continue
                if origin != self.origin and events:
                    return events
            elif kind == "pong":
                self._awaiting_pong = False
            elif kind == "subscribe":
                # The driver subscribed again on a new connection: what was published in
                # between is lost, so catch up (defensive: its retries are turned off).
                self.receiving.reconnects += 1
                await self.catch_up()
        return None

    async def _check_receiver(self) -> None:
        if self._awaiting_pong:  # the last PING, a whole check interval ago, got no answer
            raise ConnectionError("no answer to PING on the subscription")
        self._awaiting_pong = True
        await self._pubsub.ping()

    async def _unsubscribe(self) -> None:
        reading, self._reading = self._reading, None
        pubsub, self._pubsub = self._pubsub, None
        client, self._recv_client = self._recv_client, None
        if reading is not None:
            reading.cancel()
        try:
            if pubsub is not None:
                await pubsub.aclose()  # disconnects: a read still waiting fails
        finally:
            if client is not None:
                await client.aclose()
            if reading is not None:
                await asyncio.wait({reading}, timeout=OP_TIMEOUT_S)
                if reading.done() and not reading.cancelled():
                    reading.exception()  # retrieved: the connection is gone anyway
