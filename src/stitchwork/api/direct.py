"""Event stream bytes onto the socket without one ASGI call chain per message, where the
server allows it.

A stream writes small messages to many clients, so the cost of a write is what bounds how many
subscribers one process serves. Through ASGI under uvicorn, every message passes Starlette's
send wrappers and the protocol's state machine (h11; websockets with a permessage-deflate
compressor per connection) into a socket write of its own: about 20 us per WebSocket message
and 15 us per SSE chunk on the benchmark machine, several times the budget of
``bench/fanout.py``. Under uvicorn's h11 and websockets-sansio protocols the writers below put
bytes on the connection's transport themselves:

- SSE: a chunk in HTTP/1.1 chunked encoding; the response still starts and ends through ASGI
  (h11 writes the headers and the final ``0`` chunk).
- WebSocket: text frames encoded once per event for every subscriber (``wire.WsMessage``), all
  of a wake-up's messages in one write, one message per frame as before. They are sent
  uncompressed, which permessage-deflate allows message by message (RSV1 unset); messages of
  ``compress_min_bytes`` or more still go through the server's compressor, like the
  ``threshold`` of Node's ``ws``.

Both wait for the transport to drain before writing, like the server's own ``send``: a client
that stops reading blocks its stream, which the bus then drops, instead of growing a buffer.
Any other server, or a test's ASGI transport, gets plain ASGI messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.protocol import State

from stitchwork.api.wire import WsMessage

try:  # the servers whose transports the writers know; any other gets ASGI messages
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle as _H11Cycle
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol as _SansIOProtocol,
    )
except ImportError:  # pragma: no cover
    _H11Cycle = _SansIOProtocol = None  # type: ignore[assignment,misc]

COMPRESS_MIN_BYTES = 1024
# A backfill page is up to a thousand events: written in pieces, each after the transport
# drained, a client that stops reading holds at most the high-water mark plus one piece.
MAX_WRITE_BYTES = 64 * 1024
CLIENT_GONE = 1006  # what Starlette reports when the server's send finds the client gone


def _server_of(receive: Any) -> object | None:
    """The protocol object behind the server's ``receive`` (Starlette passes it on as is)."""
    return getattr(receive, "__self__", None)


class BodyWriter:
    """The body chunks of a streaming HTTP response that has started."""

    def __init__(self, send: Send) -> None:
        self._send = send

    @property
    def direct(self) -> bool:
        return False

    async def write(self, chunk: bytes) -> None:
        for start in range(0, len(chunk), MAX_WRITE_BYTES):
            await self._write(chunk[start : start + MAX_WRITE_BYTES])

    async def _write(self, piece: bytes) -> None:
        await self._send({"type": "http.response.body", "body": piece, "more_body": True})

    def write_now(self, chunk: bytes) -> bool:
        """Write without waiting, if that can be done now; False otherwise."""
        return False


class _H11BodyWriter(BodyWriter):
    def __init__(self, send: Send, cycle: Any) -> None:
        super().__init__(send)
        self._cycle = cycle

    @property
    def direct(self) -> bool:
        return True

    async def _write(self, piece: bytes) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return  # as uvicorn's send: the disconnect ends the response
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))

    def write_now(self, chunk: bytes) -> bool:
        cycle = self._cycle
        if cycle.flow.write_paused or cycle.disconnected or len(chunk) > MAX_WRITE_BYTES:
            return False
        if chunk:
            cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return True


def body_writer(scope: Scope, receive: Receive, send: Send) -> BodyWriter:
    """A writer for the body of the response that ``send`` started."""
    cycle = _server_of(receive)
    if (
        _H11Cycle is not None
        and isinstance(cycle, _H11Cycle)
        # h11 frames a response without Content-Length to an HTTP/1.1 GET as chunked.
        and scope.get("http_version") == "1.1"
        and scope.get("method") == "GET"
        and cycle.response_started
        and not cycle.response_complete
    ):
        return _H11BodyWriter(send, cycle)
    return BodyWriter(send)


class TextSender:
    """The text messages of one WebSocket: several at once, back to back and in order."""

    def __init__(self, ws: WebSocket, *, compress_min_bytes: int = COMPRESS_MIN_BYTES) -> None:
        self._ws = ws
        self._lock = asyncio.Lock()
        self._compress_min_bytes = compress_min_bytes
        protocol = _server_of(getattr(ws, "_receive", None))
        self._protocol: Any = (
            protocol
            if _SansIOProtocol is not None and isinstance(protocol, _SansIOProtocol)
            else None
        )

    @property
    def direct(self) -> bool:
        return self._protocol is not None

    async def send(self, messages: Sequence[WsMessage]) -> None:
        async with self._lock:
            if self._protocol is None:
                for message in messages:
                    await self._ws.send_text(message.text)
                return
            compressing = bool(self._protocol.conn.extensions)
            frames: list[bytes] = []
            for message in messages:
                if compressing and len(message.frame) >= self._compress_min_bytes:
                    await self._write(frames)
                    frames = []
                    await self._ws.send_text(message.text)
                else:
                    frames.append(message.frame)
            await self._write(frames)

    def write_now(self, frames: bytes, longest: int) -> bool:
        """Write whole frames (``longest``: the length of the longest) without waiting, if
        that can be done now: nothing else is being sent, the socket takes more, and no frame
        is long enough to be compressed instead. False otherwise."""
        protocol = self._protocol
        if (
            protocol is None
            or self._lock.locked()
            or not protocol.writable.is_set()
            or len(frames) > MAX_WRITE_BYTES
            or (protocol.conn.extensions and longest >= self._compress_min_bytes)
            or protocol.disconnected
            or protocol.close_sent
            or protocol.conn.state is not State.OPEN
        ):
            return False
        protocol.transport.write(frames)
        return True

    async def _write(self, frames: list[bytes]) -> None:
        piece: list[bytes] = []
        size = 0
        for frame in frames:
            if piece and size + len(frame) > MAX_WRITE_BYTES:
                await self._write_piece(piece)
                piece, size = [], 0
            piece.append(frame)
            size += len(frame)
        if piece:
            await self._write_piece(piece)

    async def _write_piece(self, frames: list[bytes]) -> None:
        protocol = self._protocol
        if not protocol.writable.is_set():
            await protocol.writable.wait()
        if protocol.disconnected or protocol.close_sent or protocol.conn.state is not State.OPEN:
            raise WebSocketDisconnect(CLIENT_GONE)
        protocol.transport.write(b"".join(frames))
