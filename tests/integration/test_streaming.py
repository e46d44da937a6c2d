"""Streaming guarantees, read as real frames from a real server (uvicorn on a free port, with a
worker, in the test's event loop): every event once and in seq order over SSE, WebSocket and
the in-process bus; resume without gap or duplicate; a client that never reads holds no memory
and slows nobody down. Bad requests: ``test_streaming_errors.py``."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from stitchwork.bus.base import EventFilter
from stitchwork.bus.memory import InProcessBus, MemorySubscription
from stitchwork.domain.events import Event
from tests.conftest import Backend
from tests.integration.live import (
    JOBS,
    PING_S,
    WORKSPACE_STREAM,
    LiveServer,
    events,
    ids,
    is_complete,
    job_stream,
    live_server,
    never_reading_client,
    read_frames,
    recv_json,
    wait_until,
    ws_messages_until,
    ws_session,
)
from tests.sse import Frame, SseParser, frames_of

RETRY_FRAME = b"retry: 3000\n\n"


def streams_on(bus: InProcessBus) -> list[MemorySubscription]:
    """The bus subscriptions of event streams: serve's own (the execution scheduler's) have
    neither a job nor a workspace."""
    return [
        s
        for s in bus.subscribers
        if s.filter.job_id is not None or s.filter.workspace_id is not None
    ]


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(backend) as live:
        yield live


@pytest.fixture
async def sqlite_server(sqlite_backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(sqlite_backend) as live:
        yield live


async def wait_for_status(server: LiveServer, job_id: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while (await server.job(job_id))["status"] != status:
        assert time.monotonic() < deadline, f"job {job_id} never became {status}"
        await asyncio.sleep(0.02)


def assert_event_frames(frames: list[Frame], job_id: str, seqs: list[int]) -> None:
    """The event frames carry exactly these seqs of the job, each frame as ``id: <seq>``,
    ``event: <type>`` and the event itself as ``data``."""
    assert ids(frames) == seqs
    for frame in events(frames):
        data = frame.json()
        assert (data["seq"], data["type"], data["job_id"]) == (
            int(frame.id or 0),
            frame.event,
            job_id,
        )


def resume_with(how: str, last: int) -> dict[str, Any]:
    if how == "header":
        return {"headers": {"Last-Event-ID": str(last)}}
    return {"params": {"last_event_id": str(last)}}


def chunks(frames: list[Frame]) -> list[str]:
    return [f.json()["payload"]["chunk"] for f in events(frames) if f.event == "step.output"]


# -- ordering and completeness ------------------------------------------------------------------


async def _sse_all(server: LiveServer, job_id: str, attached: asyncio.Event) -> list[Frame]:
    frames: list[Frame] = []
    async with server.client() as api, api.stream("GET", job_stream(job_id)) as response:
        async for frame in frames_of(response):
            frames.append(frame)
            if frame.id == "2":  # job.created and job.queued are in: the stream is live
                attached.set()
    return frames  # every frame until the server ended the response


async def _ws_all(server: LiveServer, job_id: str, attached: asyncio.Event) -> list[dict[str, Any]]:
    room = f"job:{job_id}"
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room}))
        assert await recv_json(ws) == {"event": "subscribed", "room": room, "after": 0}
        messages = await ws_messages_until(ws, lambda m: m.get("seq") == 2)
        attached.set()
        messages += await ws_messages_until(
            ws, lambda m: m["event"] == "stream:complete", timeout_s=60
        )
    return messages


async def _bus_all(subscription: MemorySubscription) -> list[Event]:
    received: list[Event] = []
    while not received or not received[-1].is_job_terminal:
        event = await subscription.get(timeout_s=30)
        assert event is not None, "the bus went quiet before the job ended"
        received.append(event)
    return received


async def test_sse_ws_and_bus_each_deliver_every_event_once_in_seq_order(
    backend: Backend,
) -> None:
    count = 10_000 if backend.name == "sqlite" else 2_000
    async with live_server(backend) as server:
        await server.set_queue_paused(True)
        # A job's id is unknown until it is submitted: this subscriber watches the (otherwise
        # empty) workspace from before the submission instead.
        subscription = server.engine.bus.subscribe(EventFilter(workspace_id=server.workspace_id))
        job = await server.submit(count=count, batch=200)
        job_id = job["id"]
        sse_attached, ws_attached = asyncio.Event(), asyncio.Event()
        sse = asyncio.create_task(_sse_all(server, job_id, sse_attached))
        ws = asyncio.create_task(_ws_all(server, job_id, ws_attached))
        bus = asyncio.create_task(_bus_all(subscription))
        try:
            async with asyncio.timeout(60):
                await sse_attached.wait()
                await ws_attached.wait()
                await server.set_queue_paused(False)  # run the job with everyone listening
                frames, messages, bus_events = await asyncio.gather(sse, ws, bus)
        finally:
            subscription.close()
            for task in (sse, ws, bus):
                task.cancel()
            await server.set_queue_paused(False)
        stored = await server.engine.store.list_events(UUID(job_id), limit=count + 100)

    n = len(stored)
    assert [e.seq for e in stored] == list(range(1, n + 1))
    assert stored[-1].type == "job.completed"
    outputs = [e.payload["chunk"] for e in stored if e.type == "step.output"]
    assert outputs == [f"event {i}\n" for i in range(1, count + 1)]

    # SSE: retry first, then exactly seq 1..n, then stream.complete and the end of the response.
    assert frames[0].retry == 3000
    assert frames[0].fields_set == 1
    assert_event_frames(frames, job_id, list(range(1, n + 1)))
    assert chunks(frames) == outputs
    assert frames[-1].event == "stream.complete"
    assert frames[-1].json() == {"job_id": job_id, "status": "completed"}
    assert all(f.is_comment for f in frames[1:-1] if f.id is None)  # only pings besides

    # WebSocket: the same events as noun:verb messages, then stream:complete.
    room = f"job:{job_id}"
    ws_events = [m for m in messages if "seq" in m]
    assert len(messages) == n + 1
    assert [m["seq"] for m in ws_events] == list(range(1, n + 1))
    assert all(m["room"] == room and m["data"]["seq"] == m["seq"] for m in ws_events)
    assert [m["event"] for m in ws_events[:3]] == ["job:created", "job:status", "job:status"]
    ws_outputs = [m["data"]["payload"]["chunk"] for m in ws_events if m["event"] == "step:output"]
    assert ws_outputs == outputs
    assert messages[-1] == {
        "event": "stream:complete",
        "room": room,
        "data": {"status": "completed"},
    }

    # The in-process bus: the same n events in order, and nothing of any other job.
    assert [(e.id, e.seq) for e in bus_events] == [(e.id, e.seq) for e in stored]
    assert subscription.closed_reason == "closed by subscriber"  # never dropped


async def test_streams_the_bus_drops_catch_up_from_the_database(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit of 200 events overflows a 50-event buffer, so the bus drops every live
    subscriber again and again; each stream subscribes anew and reads what it missed from the
    database. A stream opened after the job ended replays it all from the database."""
    count = 2_000
    async with live_server(backend, subscriber_buffer=50) as server:
        bus = server.engine.bus
        subscriptions: list[MemorySubscription] = []
        subscribe = bus.subscribe

        def recording_subscribe(*args: Any, **kwargs: Any) -> MemorySubscription:
            subscriptions.append(subscribe(*args, **kwargs))
            return subscriptions[-1]

        monkeypatch.setattr(bus, "subscribe", recording_subscribe)
        await server.set_queue_paused(True)
        job = await server.submit(count=count, batch=200)
        job_id = job["id"]
        sse_attached, ws_attached = asyncio.Event(), asyncio.Event()
        api = server.client()
        sse = asyncio.create_task(_sse_all(server, job_id, sse_attached))
        ws = asyncio.create_task(_ws_all(server, job_id, ws_attached))
        workspace = asyncio.create_task(
            read_frames(api, WORKSPACE_STREAM, until=lambda f: f.event == "job.completed")
        )
        try:
            async with asyncio.timeout(60):
                await sse_attached.wait()
                await ws_attached.wait()
                await wait_until(lambda: len(subscriptions) == 3, timeout_s=5, what="3 streams")
                await server.set_queue_paused(False)
                frames, messages, on_workspace = await asyncio.gather(sse, ws, workspace)
                late = await read_frames(api, job_stream(job_id), until=None)
        finally:
            for task in (sse, ws, workspace):
                task.cancel()
            await api.aclose()
            await server.set_queue_paused(False)
        stored = await server.engine.store.list_events(UUID(job_id), limit=count + 100)

    n = len(stored)
    dropped = [s for s in subscriptions if (s.closed_reason or "").startswith("slow consumer")]
    assert len(dropped) >= 6  # each of the three streams was dropped more than once
    assert_event_frames(frames, job_id, list(range(1, n + 1)))
    assert is_complete(frames[-1])
    assert [m["seq"] for m in messages if "seq" in m] == list(range(1, n + 1))
    assert messages[-1]["event"] == "stream:complete"
    assert ids(on_workspace) == [e.id for e in stored]
    assert_event_frames(late, job_id, list(range(1, n + 1)))
    assert is_complete(late[-1])
    assert chunks(late) == [f"event {i}\n" for i in range(1, count + 1)]


# -- frame format, pings and headers ------------------------------------------------------------


async def _idle_frames(
    server: LiveServer, url: str, pings: int
) -> tuple[bytes, list[Frame], float]:
    raw = b""
    parser = SseParser()
    frames: list[Frame] = []
    async with server.client() as api, asyncio.timeout(10):
        started = time.monotonic()
        async with api.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-accel-buffering"] == "no"
            assert response.headers["cache-control"] == "no-cache"
            async for chunk in response.aiter_raw():
                raw += chunk
                frames += parser.feed(chunk)
                if sum(f.comments == ["ping"] for f in frames) == pings:
                    break
    return raw, frames, started


async def test_streams_start_with_retry_then_ping_at_the_configured_interval(
    sqlite_server: LiveServer,
) -> None:
    server = sqlite_server
    await server.set_queue_paused(True)  # the job stays queued: both streams go idle
    job = await server.submit(count=1)
    streams = await asyncio.gather(
        _idle_frames(server, job_stream(job["id"]), pings=3),
        _idle_frames(server, WORKSPACE_STREAM, pings=3),
    )
    for raw, frames, started in streams:
        assert raw.startswith(RETRY_FRAME)
        assert frames[0].retry == 3000
        assert [f.event for f in frames[1:3]] == ["job.created", "job.queued"]
        pings = frames[3:]
        assert all(f.is_comment and f.comments == ["ping"] for f in pings)
        assert raw.endswith(b"\n\n: ping\n\n: ping\n\n: ping\n\n")
        times = [started, *(f.received_at for f in pings)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(PING_S * 0.8 <= gap <= PING_S + 0.5 for gap in gaps), gaps
    (_, on_job, _), (_, on_workspace, _) = streams
    assert ids(on_job) == [1, 2]  # a job stream's id is the job's seq...
    first_ids = [e.id for e in await server.engine.store.list_events(UUID(job["id"]))]
    assert ids(on_workspace) == first_ids  # ...a workspace stream's the global event id


# -- resume -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_job_stream_resumes_after_the_last_event_id_without_gap_or_duplicate(
    server: LiveServer, how: str
) -> None:
    job = await server.submit(count=60, rate_per_s=60)
    job_id = job["id"]
    async with server.client() as api:
        first = await read_frames(
            api,
            job_stream(job_id),
            until=lambda f: f.event == "step.output" and int(f.id or 0) >= 15,
        )
        last = ids(first)[-1]
        assert (await server.job(job_id))["status"] == "running"  # resuming a live job
        rest = await read_frames(api, job_stream(job_id), until=None, **resume_with(how, last))

    n = len(await server.engine.store.list_events(UUID(job_id)))
    assert ids(first) == list(range(1, last + 1))
    assert rest[0].retry == 3000
    assert_event_frames(rest, job_id, list(range(last + 1, n + 1)))
    assert is_complete(rest[-1])
    assert chunks(first + rest) == [f"event {i}\n" for i in range(1, 61)]


async def test_last_event_id_header_wins_over_the_query_parameter(
    sqlite_server: LiveServer,
) -> None:
    await sqlite_server.set_queue_paused(True)
    job = await sqlite_server.submit(count=1)
    async with sqlite_server.client() as api:
        frames = await read_frames(
            api,
            job_stream(job["id"]),
            until=lambda f: f.id is not None,
            headers={"Last-Event-ID": "1"},
            params={"last_event_id": "0"},
        )
    assert ids(frames) == [2]


@pytest.mark.parametrize("how", ["header", "query"])
async def test_workspace_stream_resumes_after_the_last_global_id(
    server: LiveServer, how: str
) -> None:
    workspace_id, key = await server.new_key(f"resume-{how}")
    async with server.client(key) as api:
        response = await api.post(
            JOBS, json={"type": "emit", "payload": {"count": 60, "rate_per_s": 60}}
        )
        job_id = response.json()["id"]
        first = await read_frames(
            api,
            WORKSPACE_STREAM,
            until=lambda f: f.event == "step.output" and f.json()["seq"] >= 15,
        )
        last = ids(first)[-1]
        assert (await server.job(job_id, key))["status"] == "running"
        rest = await read_frames(
            api,
            WORKSPACE_STREAM,
            until=lambda f: f.event == "job.completed",
            **resume_with(how, last),
        )

    stored = await server.engine.store.list_workspace_events(workspace_id)
    assert ids(first) + ids(rest) == [e.id for e in stored]
    assert [f.json()["seq"] for f in events(first + rest)] == list(range(1, len(stored) + 1))
    assert all(f.json()["id"] == int(f.id or 0) for f in events(first + rest))


async def test_type_filter_selects_step_events_on_both_streams(server: LiveServer) -> None:
    job = await server.submit(count=40, rate_per_s=60)
    job_id = job["id"]
    steps_only = {"type": "step.*"}
    async with server.client() as api:
        on_job, on_workspace = await asyncio.gather(
            read_frames(api, job_stream(job_id), until=None, params=steps_only),
            read_frames(
                api,
                WORKSPACE_STREAM,
                until=lambda f: f.event == "step.completed",
                params=steps_only,
            ),
        )
        middle = ids(on_workspace)[20]
        resumed = await read_frames(
            api,
            WORKSPACE_STREAM,
            until=lambda f: f.event == "step.completed",
            params={**steps_only, "last_event_id": str(middle)},
        )

    stored = await server.engine.store.list_events(UUID(job_id))
    steps = [e for e in stored if e.type.startswith("step.")]
    assert len(steps) == 42  # started, 40 outputs, completed
    assert_event_frames(on_job, job_id, [e.seq for e in steps])
    assert is_complete(on_job[-1])  # the filtered-out job.completed still ends the stream
    assert ids(on_workspace) == [e.id for e in steps]
    assert ids(resumed) == [e.id for e in steps if e.id > middle]


async def test_ws_subscribe_with_after_resumes_a_running_job_without_gap(
    server: LiveServer,
) -> None:
    job = await server.submit(count=60, rate_per_s=60)
    room = f"job:{job['id']}"
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room}))
        first = await ws_messages_until(ws, lambda m: m.get("seq", 0) >= 15)
    seen = [m["seq"] for m in first if "seq" in m]
    last = seen[-1]
    assert (await server.job(job["id"]))["status"] == "running"
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room, "after": last}))
        rest = await ws_messages_until(ws, lambda m: m["event"] == "stream:complete")

    n = len(await server.engine.store.list_events(UUID(job["id"])))
    assert seen == list(range(1, last + 1))
    assert rest[0] == {"event": "subscribed", "room": room, "after": last}
    assert [m["seq"] for m in rest if "seq" in m] == list(range(last + 1, n + 1))
    assert rest[-1]["data"] == {"status": "completed"}


# -- a client that never reads ------------------------------------------------------------------


@pytest.fixture
def heap_of_this_test_only() -> Iterator[None]:
    """Late in a full run the test process holds the heap of every earlier test, and a full
    garbage collection of it can stall the loop (a fresh-clone CI run once saw a 0.6 s stall
    here, failing the latency bound): the figures would measure the suite, not the server.
    What earlier tests left is set aside while this one runs."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("heap_of_this_test_only")
async def test_a_client_that_never_reads_is_dropped_without_slowing_the_others(
    sqlite_backend: Backend,
) -> None:
    buffer = 50
    count = 3_000
    async with live_server(sqlite_backend, subscriber_buffer=buffer) as server:
        bus = server.engine.bus
        await server.set_queue_paused(True)
        # Commits of fewer events than the buffer holds: a reader that keeps up is never dropped.
        job = await server.submit(count=count, batch=25)
        job_id = job["id"]
        max_pending = max_subscribers = 0
        watching = True

        async def watch_bus() -> None:
            nonlocal max_pending, max_subscribers
            while watching:
                subscribers = streams_on(bus)
                max_subscribers = max(max_subscribers, len(subscribers))
                max_pending = max([max_pending, *(s.pending for s in subscribers)])
                await asyncio.sleep(0.002)

        stalled = await never_reading_client(server, job_stream(job_id))
        watcher = asyncio.create_task(watch_bus())
        try:
            await wait_until(lambda: len(streams_on(bus)) == 1, timeout_s=5, what="subscription")
            (slow,) = streams_on(bus)
            latencies: list[float] = []
            frames: list[Frame] = []
            async with (
                server.client() as api,
                asyncio.timeout(60),
                api.stream("GET", job_stream(job_id)) as response,
            ):
                async for frame in frames_of(response):
                    if not frames:
                        await server.set_queue_paused(False)
                    frames.append(frame)
                    if frame.id is not None:
                        created = datetime.fromisoformat(frame.json()["created_at"])
                        latencies.append((datetime.now(UTC) - created).total_seconds())
            # The reading client is done; the other is still connected and still not reading.
            subscribers_left = len(streams_on(bus))
        finally:
            watching = False
            await watcher
            stalled.close()
            await server.set_queue_paused(False)
        # Its request ends once it hangs up.
        state = server.http.server_state
        await wait_until(lambda: not state.tasks, timeout_s=5, what="the stalled request to end")

    n = count + 6  # created, queued, started, step.started, step.completed, completed
    assert ids(frames) == list(range(1, n + 1))
    assert is_complete(frames[-1])
    latencies.sort()
    assert latencies[len(latencies) * 99 // 100] < 0.5, latencies[-20:]
    assert slow.closed_reason is not None
    assert slow.closed_reason.startswith("slow consumer")
    assert max_pending <= buffer
    assert max_subscribers <= 2  # no pile-up of re-subscriptions for the stalled client
    assert subscribers_left == 0  # nothing is buffered for the client that never reads


# -- curl ---------------------------------------------------------------------------------------


async def test_curl_receives_the_documented_frames(sqlite_server: LiveServer) -> None:
    server = sqlite_server
    job = await server.submit(count=20, rate_per_s=200)
    curl = await asyncio.create_subprocess_exec(
        *("curl", "-N", "-sS", "-H", f"Authorization: Bearer {server.key}"),
        f"{server.url}{job_stream(job['id'])}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    parser = SseParser()
    frames: list[Frame] = []
    raw = b""
    try:
        async with asyncio.timeout(20):
            assert curl.stdout is not None
            while not frames or not is_complete(frames[-1]):
                chunk = await curl.stdout.read(65536)
                assert chunk, "curl's output ended before stream.complete"
                raw += chunk
                frames += parser.feed(chunk)
            rest, errors = await curl.communicate()
    finally:
        if curl.returncode is None:
            curl.kill()
            await curl.wait()

    assert curl.returncode == 0, errors  # the server ended the response by itself
    assert rest == b""
    assert not parser.unfinished
    assert raw.startswith(RETRY_FRAME)
    n = len(await server.engine.store.list_events(UUID(job["id"])))
    assert_event_frames(frames, job["id"], list(range(1, n + 1)))
    created = raw.split(b"\n\n")[1].decode().splitlines()
    assert created[0] == "event: job.created"
    assert created[1].startswith('data: {"id":')
    assert created[2] == "id: 1"
    done = json.dumps({"job_id": job["id"], "status": "completed"})
    assert raw.endswith(f"event: stream.complete\ndata: {done}\n\n".encode())


# -- WebSocket rooms ----------------------------------------------------------------------------


async def test_ws_unsubscribe_stops_the_rooms_messages(sqlite_server: LiveServer) -> None:
    server = sqlite_server
    job = await server.submit(count=30, rate_per_s=60)
    room = f"job:{job['id']}"
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room}))
        await ws_messages_until(ws, lambda m: m["event"] == "step:output")
        await ws.send(json.dumps({"action": "unsubscribe", "room": room}))
        await ws_messages_until(ws, lambda m: m["event"] == "unsubscribed")
        assert streams_on(server.engine.bus) == []  # the room's subscription is gone
        await wait_for_status(server, job["id"], "completed")
        await ws.send(json.dumps({"action": "ping"}))
        after = await ws_messages_until(ws, lambda m: m["event"] == "pong")
    assert after == [{"event": "pong"}]  # nothing of the job's remaining events


async def test_ws_workspace_room_delivers_events_of_every_job_once(
    sqlite_server: LiveServer,
) -> None:
    server = sqlite_server
    room = f"workspace:{server.workspace_id}:jobs"
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": room}))
        assert (await recv_json(ws))["event"] == "subscribed"
        jobs = {(await server.submit("noop"))["id"] for _ in range(2)}
        completed: set[str] = set()

        def both_done(message: dict[str, Any]) -> bool:
            if message["data"]["type"] == "job.completed":
                completed.add(message["data"]["job_id"])
            return completed == jobs

        messages = await ws_messages_until(ws, both_done)
    assert all(m["room"] == room for m in messages)
    stored = await server.engine.store.list_workspace_events(server.workspace_id)
    assert sorted(m["id"] for m in messages) == [e.id for e in stored]
    assert len({m["id"] for m in messages}) == len(messages)


async def test_closed_streams_leave_no_bus_subscription(sqlite_server: LiveServer) -> None:
    server = sqlite_server
    bus = server.engine.bus
    await server.set_queue_paused(True)
    job = await server.submit(count=1)
    async with server.client() as api:
        await read_frames(api, job_stream(job["id"]), until=lambda f: f.id == "2")
        await read_frames(api, WORKSPACE_STREAM, until=lambda f: f.id is not None)
    async with ws_session(server) as ws:
        await ws.send(json.dumps({"action": "subscribe", "room": f"job:{job['id']}"}))
        await ws.send(
            json.dumps({"action": "subscribe", "room": f"workspace:{server.workspace_id}:jobs"})
        )
        await ws_messages_until(ws, lambda m: m.get("seq") == 2)
    await wait_until(lambda: not streams_on(bus), timeout_s=5, what="no subscribers")
