"""WebSocket ``/api/v1/ws``: authenticate, then subscribe to rooms.

Client -> server (JSON text messages):
    {"action": "auth", "token": "sw_..."}                 must be first (else close 1008)
    {"action": "subscribe", "room": "job:<id>", "after": 12}
    {"action": "subscribe", "room": "workspace:<id>:jobs", "after": 3456}
    {"action": "subscribe", "room": "execution:<id>", "after": 7}
    {"action": "unsubscribe", "room": "job:<id>"}
    {"action": "ping"}
Server -> client:
    {"event": "job:status", "room": "job:<id>", "seq": 3, "id": 871, "data": {<event>}}
    {"event": "subscribed" | "unsubscribed" | "authenticated" | "pong" | "stream:complete", ...}
    {"event": "error", "message": "..."}
``after`` is a seq for job and execution rooms and a global event id for workspace rooms.
The key authenticates in the first message, so each room checks its scope when subscribed
(``ROOM_SCOPES``): an error naming ``required_scope`` when the key lacks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from stitchwork.api.direct import TextSender
from stitchwork.api.execution_stream import (
    ExecutionComplete,
    ExecutionItem,
    execution_event_batches,
)
from stitchwork.api.streaming import (
    MAX_EVENT_ID,
    MAX_SEQ,
    Complete,
    JobEvents,
    Ping,
    StreamItem,
    workspace_event_batches,
)
from stitchwork.api.wire import WsMessage, ws_frames, ws_message
from stitchwork.errors import NotFound, StitchworkError
from stitchwork.runtime.engine import Engine
from stitchwork.services.auth import Principal, Scope

router = APIRouter(tags=["events"])
log = structlog.get_logger(__name__)

POLICY_VIOLATION = 1008
ACTIONS = ("subscribe", "unsubscribe", "ping")
ROOM_SCOPES = {
    "job": Scope.JOBS_READ,
    "workspace": Scope.JOBS_READ,
    "execution": Scope.EXECUTIONS_READ,
}


class _Connection:
    def __init__(self, ws: WebSocket, engine: Engine, principal: Principal) -> None:
        self.ws = ws
        self.engine = engine
        self.principal = principal
        self.rooms: dict[str, asyncio.Task[None]] = {}
        # One sender for every room: a batch goes out whole, another room's never in between.
        self.sender = TextSender(ws)

    async def send(self, message: dict[str, Any]) -> None:
        await self.sender.send([WsMessage(json.dumps(message, default=str))])

    async def error(self, message: str, **extra: Any) -> None:
        await self.send({"event": "error", "message": message, **extra})

    async def handle(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError as exc:
            await self.error(f"malformed JSON message: {exc}")
            return
        if not isinstance(message, dict):
            await self.error('a message must be a JSON object such as {"action": "ping"}')
            return
        action = message.get("action")
        if action == "ping":
            await self.send({"event": "pong"})
        elif action == "subscribe":
            await self.subscribe(message)
        elif action == "unsubscribe":
            await self.unsubscribe(message)
        elif action == "auth":
            await self.error("already authenticated")
        else:
            await self.error(
                f"unknown action {action!r}; expected one of: {', '.join(ACTIONS)}",
                action=str(action),
            )

    async def _items(
        self, room: str, after: int
    ) -> AsyncIterator[list[StreamItem]] | AsyncIterator[list[ExecutionItem]] | str:
        """The stream behind a room, or an error message why the key may not see it."""
        kind, _, rest = room.partition(":")
        settings = self.engine.settings
        ping_s = settings.sse_ping_interval.total_seconds()
        if kind == "job":
            try:
                job_id = UUID(rest)
                await self.engine.jobs.get(self.principal.workspace_id, job_id)
            except (ValueError, NotFound):
                return f"room {room!r}: no such job in this key's workspace"
            live = JobEvents(self.engine, job_id, after_seq=after, ping_s=ping_s)
            if self.sender.direct:
                live.follow(lambda events: self.sender.write_now(*ws_frames(events, room)))
            return live.batches()
        if kind == "workspace" and rest.endswith(":jobs"):
            try:
                workspace_id = UUID(rest.removesuffix(":jobs"))
            except ValueError:
                return f"room {room!r}: not a workspace id"
            if workspace_id != self.principal.workspace_id:
                return f"room {room!r}: this key may not see that workspace"
            return workspace_event_batches(self.engine, workspace_id, after_id=after, ping_s=ping_s)
        if kind == "execution":
            try:
                execution_id = UUID(rest)
                await self.engine.executions.get(self.principal.workspace_id, execution_id)
            except (ValueError, NotFound):
                return f"room {room!r}: no such execution in this key's workspace"
            return execution_event_batches(
                self.engine, execution_id, after_seq=after, ping_s=ping_s
            )
        return f"unknown room {room!r}; expected job:<id>, execution:<id> or workspace:<id>:jobs"

    async def subscribe(self, message: dict[str, Any]) -> None:
        room, after = message.get("room"), message.get("after", 0)
        if not isinstance(room, str) or not room:
            await self.error('subscribe needs a "room", e.g. "job:<id>"')
            return
        limit = MAX_SEQ if room.startswith(("job:", "execution:")) else MAX_EVENT_ID
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= limit:
            await self.error(
                f'"after" must be a non-negative integer (at most {limit}), not {after!r}',
                room=room,
            )
            return
        if room in self.rooms:
            await self.error(f"already subscribed to {room!r}", room=room)
            return
        scope = ROOM_SCOPES.get(room.partition(":")[0])
        if scope is not None and not self.principal.allows(scope):
            await self.error(
                f"room {room!r} needs the scope {scope.value!r}, which this key lacks",
                room=room,
                required_scope=scope.value,
            )
            return
        items = await self._items(room, after)
        if isinstance(items, str):
            await self.error(items, room=room)
            return
        await self.send({"event": "subscribed", "room": room, "after": after})
        self.rooms[room] = asyncio.create_task(self._pump(room, items))

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        room = message.get("room")
        task = self.rooms.pop(room, None) if isinstance(room, str) else None
        if task is None:
            await self.error(f"not subscribed to {room!r}", room=str(room))
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.send({"event": "unsubscribed", "room": room})

    async def _pump(
        self,
        room: str,
        batches: AsyncIterator[list[StreamItem]] | AsyncIterator[list[ExecutionItem]],
    ) -> None:
        async for batch in batches:
            messages: list[WsMessage] = []
            complete: Complete | ExecutionComplete | None = None
            for item in batch:
                if isinstance(item, Ping):
                    continue  # the protocol's own ping frames keep the connection alive
                if isinstance(item, Complete | ExecutionComplete):
                    complete = item
                    break
                messages.append(ws_message(item, room))
            if complete is not None:
                end = {
                    "event": "stream:complete",
                    "room": room,
                    "data": {"status": complete.status},
                }
                messages.append(WsMessage(json.dumps(end)))
            if messages:
                await self.sender.send(messages)
            if complete is not None:
                self.rooms.pop(room, None)
                return

    async def close(self) -> None:
        for task in self.rooms.values():
            task.cancel()
        await asyncio.gather(*self.rooms.values(), return_exceptions=True)
        self.rooms.clear()


async def _authenticate(ws: WebSocket, engine: Engine) -> Principal | None:
    timeout = engine.settings.ws_auth_timeout.total_seconds()
    try:
        raw = await asyncio.wait_for(ws.receive_text(), timeout)
    except TimeoutError:
        await ws.close(POLICY_VIOLATION, "authenticate first: no auth message in time")
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        message = None
    if not isinstance(message, dict) or message.get("action") != "auth":
        await ws.close(
            POLICY_VIOLATION, 'authenticate first: send {"action": "auth", "token": "<key>"}'
        )
        return None
    token = message.get("token")
    try:
        return await engine.auth.authenticate(token if isinstance(token, str) else None)
    except StitchworkError as exc:
        await ws.close(POLICY_VIOLATION, exc.message[:120])
        return None


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    engine: Engine = ws.app.state.engine
    await ws.accept()
    principal = await _authenticate(ws, engine)
    if principal is None:
        return
    connection = _Connection(ws, engine, principal)
    subscribers = engine.metrics.streams.labels("websocket")
    subscribers.inc()
    try:
        await connection.send(
            {"event": "authenticated", "data": {"workspace_id": str(principal.workspace_id)}}
        )
        while True:
            await connection.handle(await ws.receive_text())
    except WebSocketDisconnect:
        return  # the client left: nothing to answer
    finally:
        subscribers.dec()
        await connection.close()
