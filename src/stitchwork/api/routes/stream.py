"""Server-sent events: ``/jobs/{id}/events/stream`` and ``/events/stream``.

Frames: ``retry: 3000`` first; then ``id:`` / ``event:`` / ``data:`` per event (``id`` is the
job's ``seq`` on a job stream and the global event id on the workspace stream); ``: ping``
comments while idle; ``event: stream.complete`` and the end of the response once the job is
terminal. Resume with the ``Last-Event-ID`` header (browsers send it) or ``?last_event_id=``.
Both need ``jobs:read``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import format_sse_event
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from stitchwork.api.deps import EngineDep, require
from stitchwork.api.direct import body_writer
from stitchwork.api.streaming import (
    MAX_EVENT_ID,
    MAX_SEQ,
    Complete,
    JobEvents,
    Ping,
    StreamItem,
    workspace_event_batches,
)
from stitchwork.api.wire import sse_chunk, sse_frame
from stitchwork.domain.events import Event
from stitchwork.errors import InvalidRequest
from stitchwork.services.auth import Principal, Scope

router = APIRouter(tags=["events"])

RETRY_MS = 3000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = b": ping\n\n"
RETRY_FRAME = format_sse_event(retry=RETRY_MS)

TypesQuery = Annotated[
    list[str] | None,
    Query(alias="type", description="event type or glob such as step.*; repeatable"),
]


def resume_point(header: str | None, query: str | None, maximum: int) -> int:
    """The ``Last-Event-ID`` (header first) as an integer from 0 to ``maximum``, 0 when
    absent."""
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    # isdigit() alone accepts "²" (which int() rejects) and other non-ASCII digits.
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise InvalidRequest(
            f"Last-Event-ID must be a non-negative integer (the id: of the last event "
            f"received; at most {maximum}), not {raw[:40]!r}",
            field="last_event_id",
        )
    return int(raw)


async def _frames(
    batches: AsyncIterator[list[StreamItem]], *, by_seq: bool
) -> AsyncIterator[bytes]:
    """One chunk per batch: the events that were ready together go out in one write."""
    yield RETRY_FRAME
    async for batch in batches:
        events = [item for item in batch if isinstance(item, Event)]
        if len(events) == len(batch):  # the common case: shared with the round's other streams
            yield sse_chunk(events, by_seq=by_seq)
        else:
            yield b"".join([_frame(item, by_seq) for item in batch])


def _frame(item: StreamItem, by_seq: bool) -> bytes:
    if isinstance(item, Ping):
        return PING
    if isinstance(item, Complete):
        data = json.dumps({"job_id": str(item.job_id), "status": item.status})
        return format_sse_event(event="stream.complete", data_str=data)
    return sse_frame(item, by_seq=by_seq)


class EventStreamResponse(StreamingResponse):
    """A ``StreamingResponse`` whose chunks go through ``direct.body_writer``: straight to
    the socket where the server allows it (the headers and the end still go through ASGI).
    With ``live``, that job's live events are written by the bus as they come (``follow``)."""

    def __init__(self, frames: AsyncIterator[bytes], live: JobEvents | None = None) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        self._frames = frames
        self._live = live
        self._receive: Receive | None = None
        self._scope: AsgiScope = {}

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        self._scope, self._receive = scope, receive
        subscribers = scope["app"].state.engine.metrics.streams.labels("sse")
        subscribers.inc()
        try:
            await super().__call__(scope, receive, send)
        finally:
            subscribers.dec()

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        assert self._receive is not None
        writer = body_writer(self._scope, self._receive, send)
        if self._live is not None and writer.direct:
            self._live.follow(lambda events: writer.write_now(sse_chunk(events, by_seq=True)))
        async for chunk in self._frames:
            await writer.write(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@router.get(
    "/jobs/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={204: {"description": "resumed after the last event of a finished job"}},
)
async def stream_job_events(
    job_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.JOBS_READ)],
    type_: TypesQuery = None,
    last_event_id: Annotated[str | None, Query(description="resume after this seq")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """A job's events as they happen (after a backfill of what was missed), ending with
    ``stream.complete`` when the job is terminal."""
    after = resume_point(last_event_id_header, last_event_id, MAX_SEQ)
    job = await engine.jobs.get(principal.workspace_id, job_id)  # 404 before the stream starts
    if after and job.is_terminal and after >= job.last_event_seq:
        # A client resuming a finished job has everything: 204 tells a browser's EventSource
        # to stop reconnecting (it would otherwise get stream.complete every 3 s, forever).
        return Response(status_code=204)
    live = JobEvents(
        engine,
        job_id,
        after_seq=after,
        types=tuple(type_ or ()),
        ping_s=engine.settings.sse_ping_interval.total_seconds(),
    )
    return EventStreamResponse(_frames(live.batches(), by_seq=True), live)


@router.get("/events/stream", response_class=StreamingResponse)
async def stream_workspace_events(
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.JOBS_READ)],
    type_: TypesQuery = None,
    job_id: Annotated[UUID | None, Query(description="only this job's events")] = None,
    last_event_id: Annotated[
        str | None, Query(description="resume after this event id; 'latest': only new events")
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Every event of the caller's workspace as it happens. Never ends on its own."""
    if last_event_id_header is None and last_event_id == "latest":
        after = await engine.store.last_event_id()
    else:
        after = resume_point(last_event_id_header, last_event_id, MAX_EVENT_ID)
    if job_id is not None:
        await engine.jobs.get(principal.workspace_id, job_id)
    batches = workspace_event_batches(
        engine,
        principal.workspace_id,
        after_id=after,
        types=tuple(type_ or ()),
        job_id=job_id,
        ping_s=engine.settings.sse_ping_interval.total_seconds(),
    )
    return EventStreamResponse(_frames(batches, by_seq=False))
