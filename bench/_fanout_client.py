"""The client role of bench/fanout.py: one process holding many SSE and WebSocket streams.

Started as ``fanout.py --role client``; writes ``<out>.ready`` once every stream delivered the
job's backfill, starts its clock when ``<out>.go`` appears, and at the end writes ``<out>`` (JSON
per stream) and ``<out>.sse.lat`` / ``<out>.ws.lat`` (latencies in ms, float64 arrays).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import time
from array import array
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

CLIENT_KEY_ENV = "STITCHWORK_FANOUT_KEY"
CONNECT_TIMEOUT_S = 180.0
CONNECTS_AT_ONCE = 25  # per client process: a burst of 1000 handshakes only measures the burst


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


def _observe(
    stats: StreamStats, state: ClientState, seq: int, created_at: str, received: float
) -> None:
    """Record one event: sequence check, then latency if it was created after the stream was
    live (backfilled events are as old as the wait for the other subscribers)."""
    stats.events += 1
    if seq <= stats.last_seq:
        stats.duplicates += 1
        return
    stats.gaps += seq - stats.last_seq - 1
    stats.last_seq = seq
    created = datetime.fromisoformat(created_at).timestamp()
    if stats.ready_at is None:
        stats.ready_at = received
    elif created >= stats.ready_at:
        stats.timed += 1
        latency_ms = (received - created) * 1000.0
        state.latencies_ms[stats.kind].append(latency_ms)
        state.worst_ms[seq] = max(latency_ms, state.worst_ms.get(seq, 0.0))
        state.first_created = min(state.first_created, created)
        state.last_received = max(state.last_received, received)


async def _sse_stream(
    client: httpx.AsyncClient,
    url: str,
    stats: StreamStats,
    state: ClientState,
    connects: asyncio.Semaphore,
    ready: asyncio.Event,
) -> None:
    async with connects:
        response = await client.send(client.build_request("GET", url), stream=True)
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        chunks = response.aiter_raw()
        buffer = b""
        # Hold the connect slot until the backfill arrived: the subscription exists by then.
        async for chunk in chunks:
            buffer = _sse_frames(buffer + chunk, stats, state, time.time())
            if stats.ready_at is not None or stats.complete:
                break
    ready.set()
    try:
        async for chunk in chunks:
            buffer = _sse_frames(buffer + chunk, stats, state, time.time())
            if stats.complete:
                return
    finally:
        await response.aclose()


def _sse_frames(buffer: bytes, stats: StreamStats, state: ClientState, received: float) -> bytes:
    """Handle the complete frames in ``buffer``; return the incomplete rest."""
    *frames, rest = buffer.split(b"\n\n")
    for frame in frames:
        event_id = event = data = None
        for line in frame.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"id":
                event_id = int(value)
            elif name == b"event":
                event = value
            elif name == b"data":
                data = value
        if event == b"stream.complete":
            stats.complete = True
        elif data is not None:
            payload = json.loads(data)
            if payload["seq"] != event_id:
                stats.error = f"id: {event_id} differs from data seq {payload['seq']}"
            _observe(stats, state, payload["seq"], payload["created_at"], received)
    return rest


async def _ws_stream(
    url: str,
    key: str,
    job_id: str,
    deflate: bool,
    stats: StreamStats,
    state: ClientState,
    connects: asyncio.Semaphore,
    ready: asyncio.Event,
) -> None:
    from websockets.asyncio.client import connect

    async with connects:
        ws = await connect(
            url,
            max_size=None,
            compression="deflate" if deflate else None,
            ping_interval=None,  # the server pings; a starved client must not hang up itself
            open_timeout=CONNECT_TIMEOUT_S,
        )
        await ws.send(json.dumps({"action": "auth", "token": key}))
        await ws.send(json.dumps({"action": "subscribe", "room": f"job:{job_id}"}))
        while stats.ready_at is None and not stats.complete:
            _ws_message(await ws.recv(), stats, state, time.time())
    ready.set()
    try:
        async for raw in ws:
            _ws_message(raw, stats, state, time.time())
            if stats.complete:
                return
    finally:
        await ws.close()


def _ws_message(raw: str | bytes, stats: StreamStats, state: ClientState, received: float) -> None:
    message = json.loads(raw)
    kind = message["event"]
    if kind == "stream:complete":
        stats.complete = True
    elif kind == "error":
        raise RuntimeError(f"server error: {message.get('message')}")
    elif "seq" in message:
        data = message["data"]
        if data["seq"] != message["seq"]:
            stats.error = f"message seq {message['seq']} differs from data seq {data['seq']}"
        _observe(stats, state, message["seq"], data["created_at"], received)


async def _guarded(stats: StreamStats, ready: asyncio.Event, coro: Any) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        stats.error = stats.error or "timed out"
        raise
    except Exception as exc:
        stats.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        ready.set()


async def run_client(args: argparse.Namespace) -> None:
    raise_fd_limit()
    key = os.environ[CLIENT_KEY_ENV]
    out = Path(args.out)
    state = ClientState()
    streams = [StreamStats("sse") for _ in range(args.sse)]
    streams += [StreamStats("ws") for _ in range(args.ws)]
    readies = [asyncio.Event() for _ in streams]
    connects = asyncio.Semaphore(CONNECTS_AT_ONCE)
    sse_url = f"{args.url}/api/v1/jobs/{args.job}/events/stream"
    ws_url = args.url.replace("http", "ws", 1) + "/api/v1/ws"
    client = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        timeout=httpx.Timeout(CONNECT_TIMEOUT_S),
    )
    tasks = []
    for stats, ready in zip(streams, readies, strict=True):
        if stats.kind == "sse":
            coro = _sse_stream(client, sse_url, stats, state, connects, ready)
        else:
            coro = _ws_stream(ws_url, key, args.job, args.ws_deflate, stats, state, connects, ready)
        tasks.append(asyncio.create_task(_guarded(stats, ready, coro)))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await asyncio.gather(*(r.wait() for r in readies))
        connected = sum(s.ready_at is not None for s in streams)
        _write_json(out.with_suffix(".ready"), {"connected": connected})
        go = out.with_suffix(".go")
        # The orchestrator creates the file when the job starts; another process's file
        # offers nothing to wait on.
        while not go.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cpu_go, wall_go = cpu_s(), time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*tasks)
        used_cpu_s, wall_s = cpu_s() - cpu_go, time.monotonic() - wall_go
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    for kind, latencies in state.latencies_ms.items():
        out.with_suffix(f".{kind}.lat").write_bytes(latencies.tobytes())
    _write_json(
        out,
        {
            "streams": [asdict(s) for s in streams],
            "first_created": state.first_created,
            "worst_ms": state.worst_ms,
            "last_received": state.last_received,
            "cpu_s": used_cpu_s,
            "wall_s": wall_s,
        },
    )


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
