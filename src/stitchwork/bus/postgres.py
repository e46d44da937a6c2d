"""Postgres LISTEN/NOTIFY relay: a process sends the ids of the events it committed, receivers
read those events from the database.

A ``NOTIFY`` payload must stay under 8000 bytes, so ids go in chunks (``<origin>:<id>,<id>…``,
about 380 ids each), all chunks of a batch in one statement. The channel is ``?channel=`` in
``bus_url``, by default ``stitchwork_events`` (plus the schema when the engine has a search
path, so schemas sharing a database do not hear each other). asyncpg listeners do not survive a
dropped connection: the relay notices (termination callback, or an unanswered check), connects
again with backoff and catches up from the database.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stitchwork.bus.relay import EventLog, LocalBus
from stitchwork.bus.remote import RemoteRelay
from stitchwork.domain.events import Event
from stitchwork.errors import ConfigError

DEFAULT_CHANNEL = "stitchwork_events"
CHANNEL_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_PAYLOAD_BYTES = 7900  # Postgres refuses 8000 and more
CONNECT_TIMEOUT_S = 3.0
OP_TIMEOUT_S = 5.0
_LOST = object()  # queued by the termination callback


def id_payloads(origin: str, ids: list[int]) -> list[str]:
    """``origin:id,id,…`` strings, each under ``MAX_PAYLOAD_BYTES``."""
    payloads: list[str] = []
    head = f"{origin}:"
    current: list[str] = []
    size = len(head)
    for event_id in ids:
        part = str(event_id)
        if current and size + 1 + len(part) > MAX_PAYLOAD_BYTES:
            payloads.append(head + ",".join(current))
            current, size = [], len(head)
        size += len(part) + (1 if current else 0)
        current.append(part)
    if current:
        payloads.append(head + ",".join(current))
    return payloads


def parse_payload(payload: str) -> tuple[str, list[int]]:
    """``(origin, ids)``; raises ``ValueError`` for anything else."""
    origin, sep, ids = payload.partition(":")
    if not sep or not ids:
        raise ValueError(f"not an event-id notification: {payload[:80]!r}")
    return origin, [int(i) for i in ids.split(",")]


def parse_bus_url(url: str, search_path: str | None) -> tuple[str, str, str]:
    """``(dsn for asyncpg, channel, url to show)``; ``ConfigError`` if malformed."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    query = parse_qsl(parts.query, keep_blank_values=True)
    channel = dict(query).get("channel")
    if channel is None:
        channel = DEFAULT_CHANNEL
        if search_path:
            channel = f"{channel}_{re.sub(r'[^a-z0-9_]', '_', search_path.lower())}"[:63]
    if not CHANNEL_PATTERN.match(channel):
        raise ConfigError(
            f"invalid bus_url channel {channel!r}: lower-case letters, digits and _, "
            "at most 63, not starting with a digit",
            field="bus_url",
        )
    rest = [q for q in query if q[0] != "channel"]  # asyncpg takes unknown ones as settings
    dsn = urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest)))
    shown = parts._replace(scheme=scheme, netloc=parts.netloc.rpartition("@")[2], query="")
    return dsn, channel, urlunsplit(shown)


class PostgresRelay(RemoteRelay):
    backend = "postgres"

    def __init__(
        self,
        url: str,
        local: LocalBus,
        log_: EventLog,
        *,
        search_path: str | None = None,
        **options: Any,
    ) -> None:
        try:
            import asyncpg  # type: ignore[import-untyped]  # noqa: F401 - the postgres extra
        except ImportError as exc:
            raise ConfigError(
                "bus_url postgresql:// needs the postgres extra: "
                "pip install 'stitchwork[postgres]'",
                field="bus_url",
            ) from exc
        self._dsn, self.channel, shown = parse_bus_url(url, search_path)
        super().__init__(local, log_, target=f"{shown} channel {self.channel}", **options)
        self.application_name = f"stitchwork-bus-{self.origin[:12]}"  # pg_stat_activity
        self._send_conn: Any = None
        self._recv_conn: Any = None
        self._notes: asyncio.Queue[object] = asyncio.Queue()

    async def _connect(self, role: str) -> Any:
        import asyncpg

        return await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=OP_TIMEOUT_S,
            server_settings={"application_name": f"{self.application_name}-{role}"},
        )

    # -- sending -------------------------------------------------------------------------------

    async def _open_sender(self) -> None:
        if self._send_conn is None or self._send_conn.is_closed():
            self._send_conn = await self._connect("send")

    async def _send_batch(self, events: list[Event]) -> None:
        payloads = id_payloads(self.origin, [e.id for e in events])
        await self._send_conn.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.channel, payloads
        )

    async def _check_sender(self) -> None:
        await self._send_conn.fetchval("SELECT 1")

    async def _close_sender(self) -> None:
        conn, self._send_conn = self._send_conn, None
        if conn is not None:
            await _close(conn)

    # -- receiving -----------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        notes: asyncio.Queue[object] = asyncio.Queue()
        self._notes = notes
        conn = await self._connect("recv")
        self._recv_conn = conn
        conn.add_termination_listener(lambda _conn: notes.put_nowait(_LOST))
        # In effect once this returns: LISTEN has executed on the server.
        await conn.add_listener(self.channel, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._notes.put_nowait(payload)

    async def _next(self, timeout_s: float) -> list[Event] | None:
        try:
            async with asyncio.timeout(timeout_s):
                first = await self._notes.get()
        except TimeoutError:
            return None
        notes = [first]
        while not self._notes.empty():  # everything that arrived together: one read
            notes.append(self._notes.get_nowait())
        ids: list[int] = []
        for note in notes:
            if note is _LOST:
                raise ConnectionError("the LISTEN connection was closed")
            try:
                origin, note_ids = parse_payload(str(note))
            except ValueError:
                continue  # someone else's NOTIFY on this channel
            if origin != self.origin:
                ids += [i for i in note_ids if not self.local.was_published(i)]
        return await self.log.find_events(ids) if ids else []

    async def _check_receiver(self) -> None:
        await self._recv_conn.fetchval("SELECT 1")

    async def _unsubscribe(self) -> None:
        conn, self._recv_conn = self._recv_conn, None
        if conn is not None:
            await _close(conn)


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), OP_TIMEOUT_S)
    except Exception:
        conn.terminate()
