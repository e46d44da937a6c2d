"""Streams write straight to the socket under uvicorn and send plain ASGI messages under any
other server, with the same frames either way; a WebSocket client that stops reading blocks only
its own stream, holds a bounded buffer and is dropped (``api/direct.py``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stitchwork.api import direct
from stitchwork.api.routes import stream as stream_route
from stitchwork.api.routes import ws as ws_route
from stitchwork.api.streaming import JobEvents
from stitchwork.bus.memory import InProcessBus, MemorySubscription
from stitchwork.domain.events import Event
from tests.conftest import Backend
from tests.integration.live import (
    LiveServer,
    ids,
    is_complete,
    job_stream,
    live_server,
    read_frames,
    recv_json,
    wait_until,
    ws_messages_until,
    ws_session,
)


def streams_on(bus: InProcessBus) -> list[MemorySubscription]:
    """The bus subscriptions of event streams: serve's own (the execution scheduler's) have
    neither a job nor a workspace."""
    return [
        s
        for s in bus.subscribers
        if s.filter.job_id is not None or s.filter.workspace_id is not None
    ]


@pytest.fixture
async def server(sqlite_backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(sqlite_backend) as live:
        yield live


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Which writer each stream got: (``sse`` | ``ws``, direct); (``sink``, True) for each
    batch of live events the bus wrote for a waiting stream."""
    seen: list[tuple[str, bool]] = []
    sink = JobEvents._sink

    def recording_sink(self: JobEvents, events: list[Event]) -> bool:
        taken = sink(self, events)
        if taken:
            seen.append(("sink", True))
        return taken

    monkeypatch.setattr(JobEvents, "_sink", recording_sink)

    def recording_body_writer(*args: Any) -> direct.BodyWriter:
        writer = direct.body_writer(*args)
        seen.append(("sse", writer.direct))
        return writer

    class RecordingTextSender(direct.TextSender):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen.append(("ws", self.direct))

    monkeypatch.setattr(stream_route, "body_writer", recording_body_writer)
    monkeypatch.setattr(ws_route, "TextSender", RecordingTextSender)
    return seen


async def _job_over_sse_and_ws(server: LiveServer, count: int) -> tuple[list[Any], list[Any]]:
    job = await server.submit(count=count, rate_per_s=500)
    room = f"job:{job['id']}"
    async with server.client() as api, ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room}))
        frames, messages = await asyncio.gather(
            read_frames(api, job_stream(job["id"]), until=is_complete),
            ws_messages_until(ws, lambda m: m["event"] == "stream:complete"),
        )
    return frames, messages


@pytest.mark.parametrize("server_kind", ["uvicorn", "another ASGI server"])
async def test_streams_deliver_the_same_frames_whether_direct_or_through_asgi(
    server: LiveServer,
    writers: list[tuple[str, bool]],
    monkeypatch: pytest.MonkeyPatch,
    server_kind: str,
) -> None:
    if server_kind != "uvicorn":  # protocols the writers do not know: plain ASGI messages
        monkeypatch.setattr(direct, "_H11Cycle", None)
        monkeypatch.setattr(direct, "_SansIOProtocol", None)
    count = 300

    frames, messages = await _job_over_sse_and_ws(server, count)

    n = count + 6  # created, queued, started, step.started, step.completed, completed
    assert ids(frames) == list(range(1, n + 1))
    assert is_complete(frames[-1])
    assert [m["seq"] for m in messages if "seq" in m] == list(range(1, n + 1))
    assert messages[0] == {"event": "subscribed", "room": messages[1]["room"], "after": 0}
    assert messages[-1]["event"] == "stream:complete"
    direct_ = server_kind == "uvicorn"
    assert sorted(w for w in writers if w[0] != "sink") == [("sse", direct_), ("ws", direct_)]
    # Directly, the bus wrote most live events for the waiting streams; through ASGI, none.
    assert (len([w for w in writers if w[0] == "sink"]) > 10) is direct_


async def test_ws_messages_big_enough_are_compressed_and_all_arrive_in_order(
    server: LiveServer,
) -> None:
    # The client offers permessage-deflate (websockets does by default, as browsers do).
    # Lines of every size: below the threshold they go out as shared uncompressed frames,
    # above it through the connection's compressor; the client must read them all, in order.
    # Lines apart in time are chunks of their own (the output stream flushes every 0.1 s).
    sizes = [10, 3000, 20, 2000, 5, 12_000, 1]
    script = "import time\n" + "\n".join(
        f"print('{i}:' + 'x' * {size}, flush=True); time.sleep(0.25)"
        for i, size in enumerate(sizes)
    )
    job = await server.submit("shell", command=[sys.executable, "-c", script])
    async with ws_session(server) as ws:
        assert ws.protocol.extensions, "permessage-deflate was not negotiated"
        await ws.send(json.dumps({"action": "subscribe", "room": f"job:{job['id']}"}))
        messages = await ws_messages_until(ws, lambda m: m["event"] == "stream:complete")

    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == list(range(1, len(seqs) + 1))
    chunks = [m["data"]["payload"]["chunk"] for m in messages if m["event"] == "step:output"]
    assert "".join(chunks).split() == [f"{i}:" + "x" * size for i, size in enumerate(sizes)]
    big = [c for c in chunks if len(c) >= direct.COMPRESS_MIN_BYTES]
    assert 0 < len(big) < len(chunks)  # both kinds of message were sent


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def _never_reading_ws(server: LiveServer, room: str) -> tuple[asyncio.StreamWriter, Any]:
    """A WebSocket that authenticates, subscribes and then never reads; small socket buffers
    on both ends (as in ``live.never_reading_client``). Returns it and the server's end."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    ours = sock.getsockname()

    def server_end() -> Any:
        for connection in server.http.server_state.connections:
            if connection.transport.get_extra_info("peername") == ours:
                return connection
        return None

    await wait_until(server_end, timeout_s=5, what="the server to accept the connection")
    connection = server_end()
    connection.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade"
        f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")  # the handshake; nothing after it is ever read
    writer.write(_masked(json.dumps({"action": "auth", "token": server.key}).encode()))
    writer.write(_masked(json.dumps({"action": "subscribe", "room": room}).encode()))
    await writer.drain()
    return writer, server_end


async def test_a_ws_client_that_never_reads_is_dropped_with_a_bounded_buffer(
    sqlite_backend: Backend,
) -> None:
    buffer = 50
    async with live_server(sqlite_backend, subscriber_buffer=buffer) as server:
        bus = server.engine.bus
        await server.set_queue_paused(True)
        job = await server.submit(count=3_000, batch=25)
        room = f"job:{job['id']}"
        stalled, server_end = await _never_reading_ws(server, room)
        await wait_until(lambda: len(streams_on(bus)) == 1, timeout_s=5, what="subscription")
        (slow,) = streams_on(bus)
        largest_buffer = 0
        watching = True

        async def watch() -> None:
            nonlocal largest_buffer
            while watching:
                connection = server_end()
                if connection is not None:
                    size = connection.transport.get_write_buffer_size()
                    largest_buffer = max(largest_buffer, size)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        try:
            async with ws_session(server) as ws:
                await ws.send(json.dumps({"action": "subscribe", "room": room}))
                assert (await recv_json(ws))["event"] == "subscribed"
                await server.set_queue_paused(False)
                messages = await ws_messages_until(
                    ws, lambda m: m["event"] == "stream:complete", timeout_s=60
                )
        finally:
            watching = False
            await watcher
            stalled.close()
            await server.set_queue_paused(False)

    assert [m["seq"] for m in messages if "seq" in m] == list(range(1, 3_007))
    assert (slow.closed_reason or "").startswith("slow consumer")
    # The server stopped writing at the transport's high-water mark (64 KiB) plus one piece
    # (a backfill page after the drop is written in pieces, each after the transport drained).
    assert largest_buffer <= 64 * 1024 + direct.MAX_WRITE_BYTES
