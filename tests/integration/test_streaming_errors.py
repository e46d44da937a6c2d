"""Every bad request to the event streams gets a clear answer: a problem+json status before an
SSE stream starts, a 1008 close with a reason before WebSocket authentication, and an error
message naming the problem (never silence) after it. Against a real server on a free port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import Backend
from tests.integration.helpers import assert_problem
from tests.integration.live import (
    JOBS,
    WORKSPACE_STREAM,
    LiveServer,
    job_stream,
    live_server,
    recv_json,
    ws_messages_until,
    ws_session,
)

UNKNOWN_JOB = "01a1fd64-6dee-7180-9fb8-45876c53a42b"


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(backend) as live:
        yield live


@pytest.fixture
async def sqlite_server(sqlite_backend: Backend) -> AsyncIterator[LiveServer]:
    async with live_server(sqlite_backend) as live:
        yield live


# -- bad requests: SSE ---------------------------------------------------------------------------


async def test_sse_on_an_unknown_job_is_a_404_problem(server: LiveServer) -> None:
    async with server.client() as api:
        response = await api.get(job_stream(UNKNOWN_JOB))
    assert_problem(response, 404, f"job {UNKNOWN_JOB} not found")


async def test_sse_on_another_workspaces_job_is_a_404_problem(server: LiveServer) -> None:
    job = await server.submit(count=1)
    _, other_key = await server.new_key("other")
    async with server.client(other_key) as other:
        on_job = await other.get(job_stream(job["id"]))
        on_workspace = await other.get(WORKSPACE_STREAM, params={"job_id": job["id"]})
    assert_problem(on_job, 404, f"job {job['id']} not found")
    assert_problem(on_workspace, 404, f"job {job['id']} not found")


async def test_sse_without_a_valid_key_is_a_401_problem(sqlite_server: LiveServer) -> None:
    job = await sqlite_server.submit(count=1)
    for key, phrase in [(None, "missing API key"), ("sw_abc_wrong", "invalid API key")]:
        async with sqlite_server.client(key=key) as client:
            for url in (job_stream(job["id"]), WORKSPACE_STREAM):
                response = await client.get(url)
                assert_problem(response, 401, phrase)
                assert response.headers["www-authenticate"] == "Bearer"


BAD_RESUME_POINTS = [
    "abc",
    "-1",
    "1.5",
    "+7",
    "0x10",
    "\u00b2",  # a digit to str.isdigit(), not to int()
    "\uff11\uff12",  # full-width digits
    "99999999999999999999",  # beyond any database integer
]


async def test_a_bad_last_event_id_is_a_422_naming_last_event_id(
    sqlite_server: LiveServer,
) -> None:
    job = await sqlite_server.submit(count=1)
    too_big_seq = str(2**31)  # job_events.seq is a 32-bit integer
    cases = [
        (url, where, value)
        for url in (job_stream(job["id"]), WORKSPACE_STREAM)
        for where in ("header", "query")
        for value in [*BAD_RESUME_POINTS, *([too_big_seq] if url != WORKSPACE_STREAM else [])]
    ]
    async with sqlite_server.client() as api:
        for url, where, value in cases:
            request: dict[str, Any] = (
                {"headers": {"Last-Event-ID": value.encode()}}
                if where == "header"
                else {"params": {"last_event_id": value}}
            )
            async with asyncio.timeout(5):
                response = await api.get(url, **request)
            assert response.status_code == 422, (url, where, value, response.text)
            shown = value if where == "query" else value.encode().decode("latin-1")
            assert_problem(response, 422, "Last-Event-ID", repr(shown), field="last_event_id")


# -- bad requests: WebSocket before authentication ----------------------------------------------


async def _closed_by_server(ws: ClientConnection) -> tuple[int | None, str | None, float]:
    started = time.monotonic()
    try:
        while True:  # anything the server sends before closing is not an answer to wait for
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed:
        return ws.close_code, ws.close_reason, time.monotonic() - started


async def test_ws_without_auth_in_time_is_closed_with_1008(sqlite_backend: Backend) -> None:
    timeout = timedelta(seconds=0.3)
    async with (
        live_server(sqlite_backend, ws_auth_timeout=timeout) as server,
        ws_session(server, key=None) as ws,
    ):
        code, reason, after_s = await _closed_by_server(ws)
    assert code == 1008
    assert reason == "authenticate first: no auth message in time"
    assert 0.2 <= after_s < 3


async def test_ws_first_message_must_be_a_valid_auth_or_close_1008(
    sqlite_server: LiveServer,
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"action": "subscribe", "room": "job:x"}, "authenticate first"),
        ({"action": "ping"}, "authenticate first"),
        ("not json", "authenticate first"),
        ('["auth"]', "authenticate first"),
        ({"action": "auth", "token": "sw_abc_wrong"}, "invalid API key"),
        ({"action": "auth", "token": "nope"}, "malformed API key"),
        ({"action": "auth", "token": 42}, "missing API key"),
        ({"action": "auth"}, "missing API key"),
    ]
    for first, phrase in cases:
        async with ws_session(sqlite_server, key=None) as ws:
            await ws.send(first if isinstance(first, str) else json.dumps(first))
            code, reason, _ = await _closed_by_server(ws)
        assert (code, phrase in (reason or "")) == (1008, True), (first, code, reason)


# -- bad requests: WebSocket after authentication -----------------------------------------------


async def _answer(ws: ClientConnection, message: Any) -> dict[str, Any]:
    await ws.send(message if isinstance(message, str) else json.dumps(message))
    return await recv_json(ws)


async def test_ws_errors_name_what_is_wrong_and_keep_the_connection(
    sqlite_server: LiveServer,
) -> None:
    server = sqlite_server
    await server.set_queue_paused(True)  # jobs stay queued: their rooms stay subscribed
    job = await server.submit(count=1)
    job_room = f"job:{job['id']}"
    other_workspace, other_key = await server.new_key("other")
    async with server.client(other_key) as other:
        other_job = (await other.post(JOBS, json={"type": "noop"})).json()["id"]
    mine = f"workspace:{server.workspace_id}:jobs"

    async with ws_session(server) as ws:
        unknown = await _answer(ws, {"action": "dance"})
        assert unknown == {
            "event": "error",
            "message": "unknown action 'dance'; expected one of: subscribe, unsubscribe, ping",
            "action": "dance",
        }
        no_action = await _answer(ws, {"room": job_room})
        assert no_action["message"].startswith("unknown action None")

        malformed = await _answer(ws, '{"action": "ping"')
        assert malformed["event"] == "error"
        assert malformed["message"].startswith("malformed JSON message")
        for not_object in ('["ping"]', '"ping"', "42", "null"):
            answer = await _answer(ws, not_object)
            assert answer["event"] == "error"
            assert "must be a JSON object" in answer["message"], not_object

        again = await _answer(ws, {"action": "auth", "token": server.key})
        assert again == {"event": "error", "message": "already authenticated"}

        for room, phrase in [
            (f"job:{other_job}", "no such job in this key's workspace"),
            (f"job:{UNKNOWN_JOB}", "no such job"),
            ("job:not-a-uuid", "no such job"),
            (f"workspace:{other_workspace}:jobs", "this key may not see that workspace"),
            ("workspace:nope:jobs", "not a workspace id"),
            ("queue:default", "unknown room 'queue:default'; expected job:<id>, execution:<id>"),
            ("execution:not-a-uuid", "no such execution"),
            (f"workspace:{server.workspace_id}", "unknown room"),
        ]:
            answer = await _answer(ws, {"action": "subscribe", "room": room})
            assert (answer["event"], answer["room"]) == ("error", room), answer
            assert phrase in answer["message"], (room, answer)

        for room, after in [
            (mine, -1),
            (mine, "5"),
            (mine, 1.5),
            (mine, True),
            (mine, 2**63),  # beyond any event id: the database would fail on it
            (job_room, -1),
            (job_room, 2**31),  # beyond any seq
        ]:
            answer = await _answer(ws, {"action": "subscribe", "room": room, "after": after})
            assert (answer["event"], answer["room"]) == ("error", room), (after, answer)
            assert '"after" must be a non-negative integer' in answer["message"]
        no_room = await _answer(ws, {"action": "subscribe"})
        assert no_room["message"] == 'subscribe needs a "room", e.g. "job:<id>"'

        subscribed = await _answer(ws, {"action": "subscribe", "room": mine})
        assert subscribed == {"event": "subscribed", "room": mine, "after": 0}
        backlog = await ws_messages_until(ws, lambda m: m.get("seq") == 2)
        assert [m["event"] for m in backlog] == ["job:created", "job:status"]
        duplicate = await _answer(ws, {"action": "subscribe", "room": mine})
        assert duplicate == {
            "event": "error",
            "message": f"already subscribed to {mine!r}",
            "room": mine,
        }

        not_subscribed = await _answer(ws, {"action": "unsubscribe", "room": job_room})
        assert not_subscribed == {
            "event": "error",
            "message": f"not subscribed to {job_room!r}",
            "room": job_room,
        }
        assert await _answer(ws, {"action": "ping"}) == {"event": "pong"}  # still usable


async def test_resuming_a_finished_job_after_its_last_event_is_a_204_so_browsers_stop(
    sqlite_server: LiveServer,
) -> None:
    job = await sqlite_server.submit(count=3)
    deadline = time.monotonic() + 20
    while (await sqlite_server.job(job["id"]))["status"] != "completed":
        assert time.monotonic() < deadline, "the job did not finish"
        await asyncio.sleep(0.05)
    done = await sqlite_server.job(job["id"])
    async with sqlite_server.client() as api:
        events = (await api.get(f"{JOBS}/{job['id']}/events")).json()
        last = events[-1]["seq"]
        at_end = await api.get(job_stream(job["id"]), headers={"Last-Event-ID": str(last)})
        before_end = await api.get(job_stream(job["id"]), headers={"Last-Event-ID": str(last - 1)})
    assert done["status"] == "completed"
    assert at_end.status_code == 204
    assert at_end.content == b""
    assert before_end.status_code == 200  # one event still to send, then stream.complete
    assert "event: job.completed" in before_end.text
    assert "event: stream.complete" in before_end.text


async def test_rest_events_after_beyond_the_seq_range_is_a_422_not_a_500(
    server: LiveServer,
) -> None:
    job = await server.submit(count=1)
    async with server.client() as api:
        response = await api.get(
            f"{JOBS}/{job['id']}/events", params={"after": "99999999999999999999"}
        )
    assert_problem(response, 422, "after")
