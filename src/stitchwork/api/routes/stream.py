"""Server-sent events: ``/jobs/{id}/events/stream`` and ``/events/stream``.

Frames: ``retry: 3000`` first; then ``id:`` / ``event:`` / ``data:`` per event (``id`` is the
job's ``seq`` on a job stream and the global event id on the workspace stream); ``: ping``
comments while idle; ``event: stream.complete`` and the end of the response once the job is
terminal. Resume with the ``Last-Event-ID`` header (browsers send it) or ``?last_event_id=``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import format_sse_event

from stitchwork.api.deps import EngineDep, PrincipalDep
from stitchwork.api.schemas import EventPublic
from stitchwork.api.streaming import (
    MAX_EVENT_ID,
    MAX_SEQ,
    Complete,
    Ping,
    StreamItem,
    job_events,
    workspace_events,
)
from stitchwork.errors import InvalidRequest

router = APIRouter(tags=["events"])

RETRY_MS = 3000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING = b": ping\n\n"

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


async def _frames(items: AsyncIterator[StreamItem], *, by_seq: bool) -> AsyncIterator[bytes]:
    yield format_sse_event(retry=RETRY_MS)
    async for item in items:
        if isinstance(item, Ping):
            yield PING
        elif isinstance(item, Complete):
            data = json.dumps({"job_id": str(item.job_id), "status": item.status})
            yield format_sse_event(event="stream.complete", data_str=data)
        else:
            yield format_sse_event(
                id=str(item.seq if by_seq else item.id),
                event=item.type,
                data_str=EventPublic.of(item).model_dump_json(),
            )


def _response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/jobs/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={204: {"description": "resumed after the last event of a finished job"}},
)
async def stream_job_events(
    job_id: UUID,
    engine: EngineDep,
    principal: PrincipalDep,
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
    items = job_events(
        engine,
        job_id,
        after_seq=after,
        types=tuple(type_ or ()),
        ping_s=engine.settings.sse_ping_interval.total_seconds(),
    )
    return _response(_frames(items, by_seq=True))


@router.get("/events/stream", response_class=StreamingResponse)
async def stream_workspace_events(
    engine: EngineDep,
    principal: PrincipalDep,
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
    items = workspace_events(
        engine,
        principal.workspace_id,
        after_id=after,
        types=tuple(type_ or ()),
        job_id=job_id,
        ping_s=engine.settings.sse_ping_interval.total_seconds(),
    )
    return _response(_frames(items, by_seq=False))
