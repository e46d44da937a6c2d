"""A real stitchwork server for streaming tests: uvicorn on a free port with a worker, in the
test's event loop (``run_embedded``), plus real HTTP and WebSocket clients of it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from stitchwork.cli.server import run_embedded
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.sse import Frame, frames_of

JOBS = "/api/v1/jobs"
WORKSPACE_STREAM = "/api/v1/events/stream"
PING_S = 0.2


def job_stream(job_id: str | UUID) -> str:
    return f"{JOBS}/{job_id}/events/stream"


@dataclass
class LiveServer:
    engine: Engine
    url: str
    key: str
    workspace_id: UUID
    http: uvicorn.Server

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/api/v1/ws"

    def client(self, key: str | None = "") -> httpx.AsyncClient:
        """A client of this server with this server's key (``key=None``: no key at all)."""
        key = self.key if key == "" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=15)

    async def new_key(self, workspace: str) -> tuple[UUID, str]:
        record, key = await self.engine.auth.create_key(workspace, "stream-tests", "admin")
        return record.workspace_id, key

    async def submit(self, job_type: str = "emit", **payload: Any) -> dict[str, Any]:
        async with self.client() as api:
            response = await api.post(JOBS, json={"type": job_type, "payload": payload})
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    async def job(self, job_id: str, key: str = "") -> dict[str, Any]:
        async with self.client(key) as api:
            response = await api.get(f"{JOBS}/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def set_queue_paused(self, paused: bool, queue: str = "default") -> None:
        async with self.client() as api:
            action = "pause" if paused else "resume"
            response = await api.post(f"/api/v1/queues/{queue}/{action}")
        assert response.status_code == 200, response.text


@asynccontextmanager
async def live_server(
    backend: Backend, *, with_worker: bool = True, **overrides: Any
) -> AsyncIterator[LiveServer]:
    """API + worker + sweeper on 127.0.0.1:<free port>; pings every ``PING_S`` unless set."""
    overrides.setdefault("sse_ping_interval", timedelta(seconds=PING_S))
    engine = await backend.open_engine(**overrides)
    try:
        record, key = await engine.auth.create_key("default", "stream-tests", "admin")
        async with run_embedded(engine, host="127.0.0.1", port=0, with_worker=with_worker) as run:
            yield LiveServer(engine, run.url, key, record.workspace_id, run.server)
            # Every client of the test has hung up: the server must have ended every request
            # (a stream that outlives its client would hold a subscription forever).
            state = run.server.server_state
            await wait_until(lambda: not state.tasks, timeout_s=5, what="open requests to end")
    finally:
        await engine.close()


async def read_frames(
    client: httpx.AsyncClient,
    path: str,
    *,
    until: Any,
    timeout_s: float = 20,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> list[Frame]:
    """Frames of one SSE request up to and including the first for which ``until(frame)``
    is true (or up to the end of the response when ``until`` is None); then disconnects."""
    frames: list[Frame] = []
    async with asyncio.timeout(timeout_s):
        async with client.stream("GET", path, headers=headers, params=params) as response:
            assert response.status_code == 200, await response.aread()
            async for frame in frames_of(response):
                frames.append(frame)
                if until is not None and until(frame):
                    break
    return frames


def events(frames: list[Frame]) -> list[Frame]:
    """The frames that carry an event (an ``id:``), in order."""
    return [f for f in frames if f.id is not None]


def ids(frames: list[Frame]) -> list[int]:
    return [int(f.id) for f in events(frames) if f.id is not None]


def is_complete(frame: Frame) -> bool:
    return frame.event == "stream.complete"


@asynccontextmanager
async def ws_session(server: LiveServer, key: str | None = "") -> AsyncIterator[ClientConnection]:
    """A WebSocket connection, authenticated with ``key`` (this server's key by default;
    ``None``: not authenticated)."""
    async with connect(server.ws_url, open_timeout=10, close_timeout=2) as ws:
        if key is not None:
            await ws.send(json.dumps({"action": "auth", "token": key or server.key}))
            assert await recv_json(ws) == {
                "event": "authenticated",
                "data": {"workspace_id": str(server.workspace_id)},
            }
        yield ws


async def recv_json(ws: ClientConnection, timeout_s: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout_s)
    message: dict[str, Any] = json.loads(raw)
    return message


async def ws_messages_until(
    ws: ClientConnection, until: Any, *, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Messages up to and including the first for which ``until(message)`` is true."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        message = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        messages.append(message)
        if until(message):
            return messages


async def wait_until(check: Callable[[], Any], *, timeout_s: float, what: str) -> None:
    """Poll a plain (not async) ``check`` until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


async def never_reading_client(server: LiveServer, path: str) -> asyncio.StreamWriter:
    """A raw TCP connection that sends the request and never reads the answer.

    Both ends get small socket buffers (the server's end too: Linux autotunes a send buffer to
    megabytes), so the server's writes to it block after a few frames on any machine."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    _, writer = await asyncio.open_connection(sock=sock)
    ours = sock.getsockname()

    def server_end() -> Any:
        for connection in server.http.server_state.connections:
            if connection.transport.get_extra_info("peername") == ours:
                return connection.transport.get_extra_info("socket")
        return None

    await wait_until(server_end, timeout_s=5, what="the server to accept the connection")
    server_end().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.key}\r\n"
    writer.write(f"{request}\r\n".encode())
    await writer.drain()
    return writer
