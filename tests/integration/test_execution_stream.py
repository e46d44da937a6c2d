"""An execution's event stream over real HTTP: live, in seq order, resumable, and complete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Backend
from tests.integration.live import (
    LiveServer,
    ids,
    is_complete,
    live_server,
    read_frames,
    recv_json,
    ws_messages_until,
    ws_session,
)

EXECUTIONS = "/api/v1/executions"


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(backend) as live:
        yield live


async def start_pull_execution(server: LiveServer, nodes: int) -> str:
    plan = {"concurrency": 2, "nodes": [{"id": f"n{i}"} for i in range(nodes)]}
    async with server.client() as api:
        created = await api.post(EXECUTIONS, json={"plan": plan, "dispatch": "pull", "start": True})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def run_all(server: LiveServer, ex_id: str) -> None:
    async with server.client() as api:
        while True:
            taken = (await api.post(f"{EXECUTIONS}/{ex_id}/next", json={"limit": 2})).json()
            if not taken["nodes"]:
                return
            await asyncio.sleep(0.02)  # let the stream see the nodes run
            names = [n["node_id"] for n in taken["nodes"]]
            reply = await api.post(f"{EXECUTIONS}/{ex_id}/report", json={"completed": names})
            assert reply.status_code == 200, reply.text


async def test_the_stream_follows_an_execution_to_its_end(server: LiveServer) -> None:
    ex_id = await start_pull_execution(server, 6)
    async with server.client() as api:
        reader = asyncio.create_task(
            read_frames(api, f"{EXECUTIONS}/{ex_id}/stream", until=None, timeout_s=30)
        )
        await asyncio.sleep(0.2)
        await run_all(server, ex_id)
        frames = await reader
    seqs = ids(frames)
    assert seqs == list(range(1, len(seqs) + 1))
    types = [f.event for f in frames if f.id is not None]
    assert types[0] == "execution.planned"
    assert types[-1] == "execution.completed"
    assert types.count("task.completed") == 6
    assert frames[0].retry == 3000
    assert is_complete(frames[-1])
    assert json.loads(frames[-1].data or "{}") == {"execution_id": ex_id, "status": "completed"}


async def test_a_resumed_stream_gets_exactly_the_missed_events(server: LiveServer) -> None:
    ex_id = await start_pull_execution(server, 4)
    await run_all(server, ex_id)
    async with server.client() as api:
        everything = await read_frames(api, f"{EXECUTIONS}/{ex_id}/stream", until=None)
        total = ids(everything)[-1]
        rest = await read_frames(
            api, f"{EXECUTIONS}/{ex_id}/stream", until=None, headers={"Last-Event-ID": "5"}
        )
        assert ids(rest) == list(range(6, total + 1))
        done = await api.get(f"{EXECUTIONS}/{ex_id}/stream", headers={"Last-Event-ID": str(total)})
        assert done.status_code == 204  # nothing left: EventSource stops reconnecting


async def test_unknown_foreign_and_bad_resume_points_are_refused(server: LiveServer) -> None:
    ex_id = await start_pull_execution(server, 1)
    _, other_key = await server.new_key("other")
    async with server.client() as api, server.client(other_key) as other:
        unknown = await api.get(f"{EXECUTIONS}/018f0000-0000-7000-8000-000000000000/stream")
        assert unknown.status_code == 404
        assert (await other.get(f"{EXECUTIONS}/{ex_id}/stream")).status_code == 404
        bad = await api.get(f"{EXECUTIONS}/{ex_id}/stream", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 422
        assert "Last-Event-ID" in bad.json()["detail"]
    async with server.client(None) as anonymous:
        assert (await anonymous.get(f"{EXECUTIONS}/{ex_id}/stream")).status_code == 401


async def test_a_websocket_execution_room_delivers_every_event_then_completes(
    server: LiveServer,
) -> None:
    ex_id = await start_pull_execution(server, 3)
    _, other_key = await server.new_key("other")
    async with ws_session(server) as ws, ws_session(server, None) as foreign:
        await foreign.send(json.dumps({"action": "auth", "token": other_key}))
        assert (await recv_json(foreign))["event"] == "authenticated"
        await ws.send(json.dumps({"action": "subscribe", "room": f"execution:{ex_id}"}))
        assert (await recv_json(ws))["event"] == "subscribed"
        await run_all(server, ex_id)
        messages = await ws_messages_until(ws, lambda m: m["event"] == "stream:complete")
        seqs = [m["seq"] for m in messages if "seq" in m]
        assert seqs == list(range(1, len(seqs) + 1))
        names = [m["event"] for m in messages]
        assert names.count("task:completed") == 3
        assert names[-2:] == ["execution:completed", "stream:complete"]
        assert messages[-1]["data"] == {"status": "completed"}
        # A resumed subscription gets the rest only; another workspace's key gets an error.
        await ws.send(json.dumps({"action": "subscribe", "room": f"execution:{ex_id}", "after": 4}))
        assert (await recv_json(ws))["event"] == "subscribed"
        rest = await ws_messages_until(ws, lambda m: m["event"] == "stream:complete")
        assert [m["seq"] for m in rest if "seq" in m] == list(range(5, seqs[-1] + 1))
        await foreign.send(json.dumps({"action": "subscribe", "room": f"execution:{ex_id}"}))
        refused = await recv_json(foreign)
        assert refused["event"] == "error"
        assert "no such execution" in refused["message"]


async def test_metrics_count_the_open_streams_by_transport(server: LiveServer) -> None:
    ex_id = await start_pull_execution(server, 1)

    async def gauge(transport: str) -> float:
        async with server.client(None) as anonymous:
            text = (await anonymous.get("/metrics")).text
        line = f'stitchwork_stream_subscribers{{transport="{transport}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].removeprefix(line)) if found else 0.0

    async with (
        server.client() as api,
        ws_session(server),
        api.stream("GET", f"{EXECUTIONS}/{ex_id}/stream") as response,
    ):
        assert response.status_code == 200
        assert await gauge("sse") == 1.0
        assert await gauge("websocket") == 1.0
    async with asyncio.timeout(5):
        while True:  # the server notices the closed connections
            if not (await gauge("sse") or await gauge("websocket")):
                break
            await asyncio.sleep(0.05)
