"""Event streams across a restart of a real ``stitchwork serve`` process: a client that
reconnects with its last ``id`` (SSE ``Last-Event-ID``, WebSocket ``after``) gets the rest of
the job's events without a gap or a duplicate, up to the end of the stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.sse import Frame, frames_of, free_port

pytestmark = pytest.mark.slow

Spawn = Callable[..., Popen[bytes]]
FAST_PINGS = {"STITCHWORK_SSE_PING_INTERVAL": "0.5"}


async def _ready(url: str, proc: Popen[bytes], data_dir: Path, timeout_s: float = 30) -> str:
    """Wait until ``serve`` answers and has stored its key; returns the key."""
    credentials = data_dir / "credentials.json"
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1) as client:
        while True:
            assert proc.poll() is None, f"serve exited early with {proc.returncode}"
            try:
                healthy = (await client.get(f"{url}/healthz")).status_code == 200
                if healthy and credentials.exists():
                    return str(json.loads(credentials.read_text())["api_key"])
            except (httpx.TransportError, ValueError):
                pass  # not listening yet, or the file is being replaced
            assert time.monotonic() < deadline, f"{url} not ready in {timeout_s}s"
            await asyncio.sleep(0.05)


async def _stop(proc: Popen[bytes], timeout_s: float = 20) -> int | None:
    """SIGTERM; the exit code, or None if the process is still running after ``timeout_s``."""
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        return None


async def _sse(
    client: httpx.AsyncClient,
    path: str,
    until: Callable[[Frame], bool],
    frames: list[Frame] | None = None,
    **kwargs: Any,
) -> list[Frame]:
    """Frames up to the first for which ``until`` is true (appended to ``frames`` as they
    arrive); then disconnects."""
    frames = [] if frames is None else frames
    async with client.stream("GET", path, **kwargs) as response:
        assert response.status_code == 200
        async for frame in frames_of(response):
            frames.append(frame)
            if until(frame):
                break
    return frames


async def _ws_until(ws: ClientConnection, until: Callable[[dict[str, Any]], bool]) -> list[Any]:
    messages: list[dict[str, Any]] = []
    while not messages or not until(messages[-1]):
        messages.append(json.loads(await ws.recv()))
    return messages


async def _ws_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    try:
        while True:
            messages.append(json.loads(await ws.recv()))
    except ConnectionClosed:
        return messages


def _seqs(frames: list[Frame]) -> list[int]:
    return [int(f.id) for f in frames if f.id is not None]


def _ws_seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages if "seq" in m]


async def test_sse_and_ws_clients_resume_across_a_serve_restart_without_gap(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The job runs in the serve process, which releases it when it stops; the new serve
    process runs it again. Both clients read part of the stream from the first process and the
    rest (what the first one wrote, then what the second writes live) from the second."""
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws_url = f"ws://127.0.0.1:{port}/api/v1/ws"
    env = {**FAST_PINGS, "STITCHWORK_SHUTDOWN_GRACE": "0"}
    first = spawn("serve", "--port", str(port), **env)
    key = await _ready(url, first, data_dir)

    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        response = await client.post(
            "/api/v1/jobs", json={"type": "emit", "payload": {"count": 100, "rate_per_s": 50}}
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        path = f"/api/v1/jobs/{job_id}/events/stream"
        room = f"job:{job_id}"

        before: list[Frame] = []
        sse = asyncio.create_task(_sse(client, path, lambda f: False, before))
        try:
            async with asyncio.timeout(60), connect(ws_url, close_timeout=2) as ws:
                await ws.send(json.dumps({"action": "auth", "token": key}))
                await ws.send(json.dumps({"action": "subscribe", "room": room}))
                ws_before = await _ws_until(ws, lambda m: m.get("seq", 0) >= 20)
                while max(_seqs(before), default=0) < 20:
                    await asyncio.wait({sse}, timeout=0.05)
                # Both clients are connected while the server stops: it ends both streams.
                assert await _stop(first) == 0
                ws_before += await _ws_until_closed(ws)
                assert ws.close_code == 1012  # "service restart": the server said why
                await sse  # the response ended (it did not break off)
        finally:
            sse.cancel()

        second = spawn("serve", "--port", str(port), **env)
        assert await _ready(url, second, data_dir) == key  # same database, same key
        last_sse, last_ws = _seqs(before)[-1], _ws_seqs(ws_before)[-1]

        async with asyncio.timeout(60), connect(ws_url, close_timeout=2) as ws:
            await ws.send(json.dumps({"action": "auth", "token": key}))
            await ws.send(json.dumps({"action": "subscribe", "room": room, "after": last_ws}))
            after = await _sse(
                client,
                path,
                lambda f: f.event == "stream.complete",
                headers={"Last-Event-ID": str(last_sse)},
            )
            ws_after = await _ws_until(ws, lambda m: m["event"] == "stream:complete")

        stored = (await client.get(f"/api/v1/jobs/{job_id}/events")).json()
        assert await _stop(second) == 0

    n = len(stored)
    assert [e["seq"] for e in stored] == list(range(1, n + 1))
    types = [e["type"] for e in stored]
    assert types.count("job.requeued") == 1  # released by the first process
    assert types.count("job.started") == 2  # and run again by the second
    assert types[-1] == "job.completed"

    assert _seqs(before) == list(range(1, last_sse + 1))
    assert _seqs(after) == list(range(last_sse + 1, n + 1))
    assert after[-1].event == "stream.complete"
    assert json.loads(after[-1].data or "{}") == {"job_id": job_id, "status": "completed"}

    assert _ws_seqs(ws_before) == list(range(1, last_ws + 1))
    assert _ws_seqs(ws_after) == list(range(last_ws + 1, n + 1))
    assert ws_after[-1] == {
        "event": "stream:complete",
        "room": room,
        "data": {"status": "completed"},
    }

    # The second run's output arrived complete and in order.
    rerun = types.index("job.started", types.index("job.requeued"))
    chunks = [e["payload"]["chunk"] for e in stored[rerun:] if e["type"] == "step.output"]
    assert chunks == [f"event {i}\n" for i in range(1, 101)]


async def _read_while_the_job_runs(
    client: httpx.AsyncClient, job_id: str, until: Callable[[Frame], bool], **kwargs: Any
) -> list[Frame]:
    """Like ``_sse``, but fails instead of waiting forever when the stream stalls: once the job
    has completed in the database, the stream has 2 s to catch up."""
    frames: list[Frame] = []
    path = f"/api/v1/jobs/{job_id}/events/stream"
    reading = asyncio.create_task(_sse(client, path, until, frames, **kwargs))
    deadline = None
    try:
        while not reading.done():
            if deadline is None:
                job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                if job["status"] == "completed":
                    deadline = time.monotonic() + 2
            elif time.monotonic() > deadline:
                raise AssertionError(
                    f"the stream stalled at seq {max(_seqs(frames), default=None)} although the "
                    "job completed in the database"
                )
            await asyncio.wait({reading}, timeout=0.2)
        return reading.result()
    finally:
        reading.cancel()


async def test_sse_follows_a_job_run_by_a_separate_worker_across_a_serve_restart(
    spawn: Spawn, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = spawn("serve", "--no-worker", "--port", str(port), **FAST_PINGS)
    spawn("worker")
    key = await _ready(url, first, data_dir)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        response = await client.post(
            "/api/v1/jobs", json={"type": "emit", "payload": {"count": 30, "rate_per_s": 50}}
        )
        job_id = response.json()["id"]
        before = await _read_while_the_job_runs(
            client, job_id, lambda f: f.event == "step.output" and int(f.id or 0) >= 10
        )
        assert await _stop(first) == 0
        second = spawn("serve", "--no-worker", "--port", str(port), **FAST_PINGS)
        await _ready(url, second, data_dir)
        last = _seqs(before)[-1]
        after = await _read_while_the_job_runs(
            client,
            job_id,
            lambda f: f.event == "stream.complete",
            headers={"Last-Event-ID": str(last)},
        )
    assert _seqs(before) + _seqs(after) == list(range(1, _seqs(after)[-1] + 1))
    assert after[-1].event == "stream.complete"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_serve_ends_open_sse_streams_and_exits_0_on_sigterm(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = spawn("serve", "--port", str(port), **FAST_PINGS)
    key = await _ready(url, serve, tmp_path / "data")
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:
        frames: list[Frame] = []
        endless = asyncio.create_task(
            _sse(client, "/api/v1/events/stream", lambda f: False, frames)
        )
        try:
            async with asyncio.timeout(5):
                while not any(f.comments == ["ping"] for f in frames):  # open and idle
                    await asyncio.wait({endless}, timeout=0.05)
            assert await _stop(serve, timeout_s=3) == 0
            done, _ = await asyncio.wait({endless}, timeout=2)
            assert done, "the server did not end the stream"
        finally:
            endless.cancel()
