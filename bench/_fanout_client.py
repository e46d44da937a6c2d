"""The client role of bench/fanout.py: one process holding many SSE and WebSocket streams.

Started as ``fanout.py --role client``; writes ``<out>.ready`` once every stream delivered the
job's backfill, starts its clock when ``<out>.go`` appears, and at the end writes ``<out>`` (JSON
per stream) and ``<out>.sse.lat`` / ``<out>.ws.lat`` (latencies in ms, float64 arrays).

The clients share the machine with the server, so each event must cost them little: every
stream is a bare asyncio protocol (HTTP/1.1 chunked decoding and WebSocket framing with
permessage-deflate, as a browser negotiates it) and reads ``seq`` and ``created_at`` with bytes
operations instead of a JSON parse. Every event is still checked: its ``seq``
against the stream's last one (gaps, duplicates), the SSE ``id:`` or the message's ``seq``
against the event's own ``seq``, and its latency is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import resource
import time
import zlib
from array import array
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CLIENT_KEY_ENV = "STITCHWORK_FANOUT_KEY"
CONNECT_TIMEOUT_S = 180.0
CONNECTS_AT_ONCE = 25  # per client process: a burst of 1000 handshakes only measures the burst
PARSED_MEMORY = 20_000
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What browsers offer; the server picks its own window size.
WS_DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


@dataclass
class StreamStats:
    """What one subscription saw."""

    kind: str
    events: int = 0
    timed: int = 0
    last_seq: int = 0
    gaps: int = 0
    duplicates: int = 0
    complete: bool = False
    error: str | None = None
    ready_at: float | None = None


@dataclass
class ClientState:
    latencies_ms: dict[str, array[float]] = field(
        default_factory=lambda: {"sse": array("d"), "ws": array("d")}
    )
    first_created: float = float("inf")
    last_received: float = 0.0
    worst_ms: dict[int, float] = field(default_factory=dict)  # per seq, over all streams
    # What each stream read and when: the latencies are worked out after the run, so that
    # the clients spend little CPU while the server needs it.
    reads: list[tuple[StreamStats, float, list[tuple[int, float]]]] = field(default_factory=list)
    # Every stream of a round receives the same bytes: each distinct SSE body and WebSocket
    # message is parsed once (a pure function of the bytes), then checked per stream.
    parsed: dict[bytes, Any] = field(default_factory=dict)
    sse_reads: dict[bytes, Any] = field(default_factory=dict)
    ws_reads: dict[bytes, Any] = field(default_factory=dict)
    created_s: dict[bytes, float] = field(default_factory=dict)

    def remember(self, key: bytes, value: Any) -> Any:
        if len(self.parsed) > PARSED_MEMORY:
            self.parsed.clear()
            self.sse_reads.clear()
            self.ws_reads.clear()
        self.parsed[key] = value
        return value

    def remember_read(self, reads: dict[bytes, Any], data: bytes, parsed: Any) -> None:
        if len(reads) > PARSED_MEMORY:
            reads.clear()
        reads[data] = parsed

    def timestamp(self, created_at: bytes) -> float:
        created = self.created_s.get(created_at)
        if created is None:
            created = datetime.fromisoformat(created_at.decode()).timestamp()
            self.created_s[created_at] = created
        return created


class Events:
    """The events (seq, created) of one read, parsed once for every stream that reads the
    same bytes, and whether their seqs follow one another."""

    __slots__ = ("consecutive", "first", "items", "last")

    def __init__(self, items: list[tuple[int, float]]) -> None:
        self.items = items
        self.first = items[0][0] if items else 0
        self.last = items[-1][0] if items else 0
        self.consecutive = all(b[0] == a[0] + 1 for a, b in itertools.pairwise(items))


NO_EVENTS = Events([])


def _observe(stats: StreamStats, state: ClientState, events: Events, received: float) -> None:
    """Check the seqs of one read's events against the stream's last one (gaps, duplicates)
    and keep them with their receive time; ``time_events`` times them after the run."""
    items = events.items
    stats.events += len(items)
    if events.consecutive and events.first == stats.last_seq + 1:
        stats.last_seq = events.last
        fresh = items
    else:
        fresh = []
        last = stats.last_seq
        for item in items:
            seq = item[0]
            if seq <= last:
                stats.duplicates += 1
                continue
            if seq != last + 1:
                stats.gaps += seq - last - 1
            last = seq
            fresh.append(item)
        stats.last_seq = last
    if stats.ready_at is None:
        stats.ready_at = received
    state.reads.append((stats, received, fresh))


def time_events(state: ClientState) -> None:
    """Time every event read: receive time - created_at, for the events created after their
    stream was live (backfilled events are as old as the wait for the other subscribers)."""
    worst = state.worst_ms
    for stats, received, items in state.reads:
        ready_at = stats.ready_at or 0.0
        out = state.latencies_ms[stats.kind]
        timed = 0
        for seq, created in items:
            if created >= ready_at and received > ready_at:
                timed += 1
                latency_ms = (received - created) * 1000.0
                out.append(latency_ms)
                if latency_ms > worst.get(seq, 0.0):
                    worst[seq] = latency_ms
                state.first_created = min(state.first_created, created)
        if timed:
            stats.timed += timed
            state.last_received = max(state.last_received, received)
    state.reads.clear()


def _sse_events(state: ClientState, frames: bytes) -> tuple[Events, bool, str]:
    """The events (seq, created) of complete SSE frames, whether ``stream.complete`` is among
    them, and an error if a frame's ``id:`` is not its event's seq."""
    cached = state.parsed.get(frames)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    events: list[tuple[int, float]] = []
    complete, error = False, ""
    for frame in frames.split(b"\n\n"):
        if frame.startswith(b"event: stream.complete"):
            complete = True
            break
        if not frame.startswith(b"event: "):
            continue  # retry: and : ping
        seq, _, created_at = event_fields(frame)
        # This server writes id: last; the id of a job stream is the event's seq.
        event_id = int(frame[frame.rindex(b"\nid: ") + 5 :])
        if event_id != seq:
            error = f"id: {event_id} differs from data seq {seq}"
        events.append((seq, state.timestamp(created_at)))
    parsed = (Events(events), complete, error)
    return state.remember(frames, parsed)  # type: ignore[no-any-return]


def _ws_event(state: ClientState, message: bytes) -> tuple[str, int, float, str]:
    """(``event`` | ``complete`` | ``error`` | ``other``, seq, created, error message)."""
    cached = state.parsed.get(message)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    if message.startswith(b'{"event": "stream:complete"'):
        parsed = ("complete", 0, 0.0, "")
    elif message.startswith(b'{"event": "error"'):
        parsed = ("error", 0, 0.0, f"server error: {json.loads(message).get('message')}")
    elif b'"seq":' not in message[:200]:
        parsed = ("other", 0, 0.0, "")  # authenticated, subscribed
    else:
        seq, data_seq, created_at = event_fields(message, envelope=True)
        error = "" if data_seq == seq else f"message seq {seq} differs from data seq {data_seq}"
        parsed = ("event", seq, state.timestamp(created_at), error)
    return state.remember(message, parsed)  # type: ignore[no-any-return]


_READ_BUFFER = memoryview(bytearray(256 * 1024))  # one per process: a read is handled at once


class _Stream(asyncio.BufferedProtocol):
    """One connection; ``ready`` resolves at its first event, ``done`` at its end.

    Reads go into one preallocated buffer (``BufferedProtocol``) instead of a fresh 256 KiB
    allocation per ``recv``."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def __init__(self, stats: StreamStats, state: ClientState) -> None:
        loop = asyncio.get_running_loop()
        self.stats = stats
        self.state = state
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.complete:
            self.fail(f"connection lost before the end of the stream: {exc}")
        self._finish()

    def fail(self, error: str) -> None:
        self.stats.error = self.stats.error or error[:300]
        self._finish()

    def _observe(self, events: Events, received: float) -> None:
        if events.items:
            _observe(self.stats, self.state, events, received)
            if not self.ready.done():
                self.ready.set_result(None)

    def _complete(self) -> None:
        self.stats.complete = True
        self._finish()

    def _finish(self) -> None:
        for future in (self.ready, self.done):
            if not future.done():
                future.set_result(None)
        if self.transport is not None:
            self.transport.close()


class SseStream(_Stream):
    def __init__(self, stats: StreamStats, state: ClientState, request: bytes) -> None:
        super().__init__(stats, state)
        self.request = request
        self.head: bytes | None = b""  # None once the response headers are read
        self.chunks = ChunkedDecoder()
        self.text = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            if not head.startswith(b"HTTP/1.1 200 "):
                self.fail(f"HTTP {head[:300]!r}")
                return
            if b"transfer-encoding: chunked" not in head[:end].lower():
                self.fail("expected a chunked response")
                return
            self.head, data = None, head[end + 4 :]
        # A read that starts clean and ends on a frame boundary is the same bytes for every
        # stream of a round: what it holds is worked out once.
        clean = not self.chunks.buffer and not self.text
        parsed = self.state.sse_reads.get(data) if clean else None
        if parsed is None:
            try:
                body = self.chunks.feed(data)
            except ValueError as exc:
                self.fail(f"bad chunked encoding: {exc}")
                return
            text = self.text + body if self.text else body
            end = text.rfind(b"\n\n")
            self.text = text[end + 2 :] if end >= 0 else text
            parsed = _sse_events(self.state, text[:end]) if end >= 0 else (NO_EVENTS, False, "")
            if clean and not self.chunks.buffer and not self.text and not self.chunks.ended:
                self.state.remember_read(self.state.sse_reads, data, parsed)
        events, complete, error = parsed
        if error:
            self.stats.error = error
        self._observe(events, received)
        if complete:
            self._complete()
        elif self.chunks.ended:
            self.fail("the response ended without stream.complete")


class WsStream(_Stream):
    def __init__(
        self, stats: StreamStats, state: ClientState, request: bytes, key: bytes, hello: bytes
    ) -> None:
        super().__init__(stats, state)
        self.request = request
        self.key = key
        self.hello = hello  # auth and subscribe frames, sent once upgraded
        self.head: bytes | None = b""
        self.reader: WsReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        assert self.transport is not None
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            deflate = ws_accept_ok(head[:end], self.key)
            if deflate is None:
                self.fail(f"WebSocket upgrade refused: {head[:300]!r}")
                return
            self.reader = WsReader(deflate=deflate)
            self.head, data = None, head[end + 4 :]
            self.transport.write(self.hello)
        reader = self.reader
        assert reader is not None
        # Frames sent to every stream of a round are the same bytes (uncompressed): a read of
        # whole frames that needs no reply is worked out once.
        clean = reader.idle
        parsed = self.state.ws_reads.get(data) if clean else None
        if parsed is None:
            try:
                messages, replies, closed = reader.feed(data)
            except ValueError as exc:
                self.fail(f"bad WebSocket frame: {exc}")
                return
            if replies:
                self.transport.write(replies)
            parsed = self._messages(messages, closed)
            if clean and reader.idle and not replies and not closed and not reader.inflated:
                self.state.remember_read(self.state.ws_reads, data, parsed)
        events, end, error = parsed
        if error and end is None:
            self.stats.error = error
        self._observe(events, received)
        if end == "complete":
            self._complete()
        elif end is not None:
            self.fail(error)

    def _messages(self, messages: list[bytes], closed: bool) -> tuple[Events, str | None, str]:
        """The events of ``messages``, then how the stream ends (``complete``, ``error``,
        ``closed`` or None) and an error text."""
        events: list[tuple[int, float]] = []
        error = ""
        for message in messages:
            kind, seq, created, problem = _ws_event(self.state, message)
            if kind == "event":
                error = problem or error
                events.append((seq, created))
            elif kind in ("complete", "error"):
                return Events(events), kind, problem
        if closed:
            reason = "the server closed the WebSocket before stream:complete"
            return Events(events), "closed", reason
        return Events(events), None, error


async def _run_stream(
    stream: _Stream, host: str, port: int, connects: asyncio.Semaphore, ready: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    try:
        # Hold the connect slot until the backfill arrived: the subscription exists by then.
        async with connects:
            await loop.create_connection(lambda: stream, host, port)
            await stream.ready
        ready.set()
        await stream.done
    except asyncio.CancelledError:
        stream.stats.error = stream.stats.error or "timed out"
        raise
    except Exception as exc:
        stream.stats.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        ready.set()
        if stream.transport is not None:
            stream.transport.close()


async def run_client(args: argparse.Namespace) -> None:
    raise_fd_limit()
    key = os.environ[CLIENT_KEY_ENV]
    out = Path(args.out)
    state = ClientState()
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    authority = f"{host}:{port}"
    sse_request = (
        f"GET /api/v1/jobs/{args.job}/events/stream HTTP/1.1\r\nHost: {authority}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    hello = ws_frame(json.dumps({"action": "auth", "token": key}).encode())
    hello += ws_frame(json.dumps({"action": "subscribe", "room": f"job:{args.job}"}).encode())
    streams: list[_Stream] = []
    for _ in range(args.sse):
        streams.append(SseStream(StreamStats("sse"), state, sse_request))
    for _ in range(args.ws):
        ws_key, ws_request = upgrade_request(authority, "/api/v1/ws", deflate=args.ws_deflate)
        streams.append(WsStream(StreamStats("ws"), state, ws_request, ws_key, hello))
    readies = [asyncio.Event() for _ in streams]
    connects = asyncio.Semaphore(CONNECTS_AT_ONCE)
    tasks = [
        asyncio.create_task(_run_stream(stream, host, port, connects, ready))
        for stream, ready in zip(streams, readies, strict=True)
    ]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await asyncio.gather(*(r.wait() for r in readies))
        connected = sum(s.stats.ready_at is not None for s in streams)
        _write_json(out.with_suffix(".ready"), {"connected": connected})
        go = out.with_suffix(".go")
        # The orchestrator creates the file when the job starts; another process's file
        # offers nothing to wait on.
        while not go.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cpu_go, wall_go = cpu_s(), time.monotonic()
        tick_s = args.read_tick_ms / 1000
        ticker = asyncio.create_task(_read_in_ticks(tick_s)) if tick_s > 0 else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*tasks)
        used_cpu_s, wall_s = cpu_s() - cpu_go, time.monotonic() - wall_go
        if ticker is not None:
            ticker.cancel()
        time_events(state)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for kind, latencies in state.latencies_ms.items():
        out.with_suffix(f".{kind}.lat").write_bytes(latencies.tobytes())
    _write_json(
        out,
        {
            "streams": [asdict(s.stats) for s in streams],
            "first_created": state.first_created,
            "worst_ms": state.worst_ms,
            "last_received": state.last_received,
            "cpu_s": used_cpu_s,
            "wall_s": wall_s,
        },
    )


async def _read_in_ticks(tick_s: float) -> None:
    """Block the loop for ``tick_s`` between looks at the sockets, so that one wake-up reads
    every socket that has data. Over loopback the server's send pays for waking the reader
    (not so for clients on other machines), and a client woken per socket costs the machine
    the CPU the server needs. Measured latencies include the wait (at most ``tick_s``)."""
    while True:
        time.sleep(tick_s)  # noqa: ASYNC251 (blocking the loop is the point)
        await asyncio.sleep(0)


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # the orchestrator polls for the file: never let it read half of one


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (1000 sockets exceed a 1024 default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the wire, with bytes operations --------------------------------------------------------


def event_fields(blob: bytes, *, envelope: bool = False) -> tuple[int, int, bytes]:
    """``seq`` (the envelope's for a WebSocket message), the event's own ``seq`` and its
    ``created_at`` from an SSE frame or a WebSocket message, without a JSON parse. Keys can
    only match outside strings: a quote inside a JSON string is escaped."""
    at = blob.index(b'"seq":')
    seq = int(blob[at + 6 : blob.index(b",", at)])
    data_seq = seq
    if envelope:
        at = blob.index(b'"seq":', blob.index(b'"data":'))
        data_seq = int(blob[at + 6 : blob.index(b",", at)])
    at = blob.rindex(b'"created_at":')  # the event's last field; a payload's comes before
    at = blob.index(b'"', at + 13) + 1
    return seq, data_seq, blob[at : blob.index(b'"', at)]


class ChunkedDecoder:
    """HTTP/1.1 ``Transfer-Encoding: chunked``, fed as the bytes arrive."""

    def __init__(self) -> None:
        self.buffer = b""
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buffer + data if self.buffer else data
        out = []
        pos = 0
        while not self.ended:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buf[pos:line_end].split(b";", 1)[0], 16)
            start = line_end + 2
            if size == 0:
                self.ended = True
                pos = len(buf)
                break
            if len(buf) < start + size + 2:
                break
            if buf[start + size : start + size + 2] != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
            out.append(buf[start : start + size])
            pos = start + size + 2
        self.buffer = buf[pos:]
        return b"".join(out)


def upgrade_request(authority: str, path: str, *, deflate: bool) -> tuple[bytes, bytes]:
    """A WebSocket handshake request and its ``Sec-WebSocket-Key``."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {authority}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if deflate:
        lines.append(f"Sec-WebSocket-Extensions: {WS_DEFLATE_OFFER}")
    return key, ("\r\n".join(lines) + "\r\n\r\n").encode()


def ws_accept_ok(head: bytes, key: bytes) -> bool | None:
    """None if the handshake response refuses the upgrade, else whether the server agreed to
    permessage-deflate."""
    status, *lines = head.split(b"\r\n")
    if not status.startswith(b"HTTP/1.1 101 "):
        return None
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 (RFC 6455)
    if headers.get(b"sec-websocket-accept") != accept:
        return None
    return headers.get(b"sec-websocket-extensions", b"").startswith(b"permessage-deflate")


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked client frame (text by default)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class WsReader:
    """Server frames to messages: reassembles fragments, inflates permessage-deflate, answers
    pings and closes."""

    def __init__(self, *, deflate: bool) -> None:
        self.inflate = zlib.decompressobj(-15) if deflate else None
        self.buffer = b""
        self.fragments: list[bytes] = []
        self.compressed = False
        self.inflated = False  # the last feed decompressed (its result depends on history)

    @property
    def idle(self) -> bool:
        """No partial frame or message held."""
        return not self.buffer and not self.fragments

    def feed(self, data: bytes) -> tuple[list[bytes], bytes, bool]:
        """Complete messages, the bytes to send back, and whether the server closed."""
        buf = self.buffer + data if self.buffer else data
        messages: list[bytes] = []
        replies = b""
        self.inflated = False
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                raise ValueError("a masked frame from the server")
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            end = start + length
            if end > n:
                break
            payload, pos = buf[start:end], end
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                replies += ws_frame(payload, 0xA)
            elif opcode == 0x8:  # close: echo its code
                self.buffer = b""
                return messages, replies + ws_frame(payload[:2], 0x8), True
            elif opcode < 0x8:
                if opcode:
                    self.compressed, self.fragments = bool(b0 & 0x40), [payload]
                else:
                    self.fragments.append(payload)
                if b0 & 0x80:  # FIN
                    message = b"".join(self.fragments)
                    self.fragments = []
                    if self.compressed:
                        if self.inflate is None:
                            raise ValueError("a compressed frame without permessage-deflate")
                        message = self.inflate.decompress(message + b"\x00\x00\xff\xff")
                        self.inflated = True
                    messages.append(message)
        self.buffer = buf[pos:]
        return messages, replies, False
