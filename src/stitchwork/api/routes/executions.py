"""``/api/v1/executions``: plans of jobs with dependencies, claims and a concurrency limit.

Reading needs ``executions:read``; creating, controlling and pull mode ``executions:write``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

from stitchwork.api.deps import EngineDep, require
from stitchwork.api.execution_schemas import (
    ExecutionCreate,
    ExecutionPage,
    ExecutionPublic,
    GrantPublic,
    NextPublic,
    NextRequest,
    NodeComplete,
    NodeFail,
    NodeReport,
    WavesPublic,
)
from stitchwork.api.execution_stream import (
    ExecutionComplete,
    ExecutionItem,
    execution_event_batches,
)
from stitchwork.api.routes.stream import RETRY_FRAME, EventStreamResponse, resume_point
from stitchwork.api.schemas import EventPublic
from stitchwork.api.streaming import MAX_SEQ, Ping
from stitchwork.api.wire import sse_frame
from stitchwork.domain.executions import TERMINAL_EXECUTION_STATUSES, Dispatch, ExecutionStatus
from stitchwork.errors import InvalidRequest
from stitchwork.services.auth import Principal, Scope
from stitchwork.services.stitcher import NodeOutcome

router = APIRouter(prefix="/executions", tags=["executions"])

Format = Literal["json", "yaml", "markdown"]
PING_FRAME = b": ping\n\n"


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExecutionPublic)
async def create_execution(
    body: ExecutionCreate,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
) -> ExecutionPublic:
    """Validate a plan (ids, edges, cycles, claims, job types) and store it as an execution.

    Nothing is stored when any part is invalid; the error names the field. A plan dispatched
    as jobs also needs ``jobs:submit:<type>`` for each of its nodes' job types.
    """
    ex = await engine.executions.import_plan(
        principal.workspace_id,
        json.dumps(body.plan),
        format="json",
        actor=principal.actor,
        dispatch=body.dispatch,
        repo=body.repo,
        start=body.start,
        check_job_type=principal.require_submit,
    )
    return ExecutionPublic.of(ex)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=ExecutionPublic,
    openapi_extra={
        "requestBody": {
            "content": {"text/markdown": {}, "application/yaml": {}, "text/plain": {}},
            "required": True,
        }
    },
)
async def import_execution(
    request: Request,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
    format: Annotated[Format | None, Query(description="detected when absent")] = None,
    dispatch: Dispatch = Dispatch.JOBS,
    repo: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
    concurrency: Annotated[int | None, Query(ge=1, le=1000)] = None,
    start: bool = False,
) -> ExecutionPublic:
    """Create an execution from a Markdown milestone table, a YAML or a JSON plan (the raw
    request body)."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the plan must be UTF-8 text", field="body") from exc
    if not text.strip():
        raise InvalidRequest("the request body is empty: send the plan document", field="body")
    ex = await engine.executions.import_plan(
        principal.workspace_id,
        text,
        format=format,
        actor=principal.actor,
        dispatch=dispatch,
        repo=repo,
        concurrency=concurrency,
        start=start,
        check_job_type=principal.require_submit,
    )
    return ExecutionPublic.of(ex)


@router.get("", response_model=ExecutionPage)
async def list_executions(
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
    status_: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ExecutionPage:
    """Executions of the caller's workspace, newest first (without their nodes)."""
    items = await engine.executions.list_executions(
        principal.workspace_id, status=status_, limit=limit
    )
    return ExecutionPage(items=[ExecutionPublic.of(ex, with_nodes=False) for ex in items])


@router.get("/{execution_id}", response_model=ExecutionPublic)
async def get_execution(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
) -> ExecutionPublic:
    return ExecutionPublic.of(await engine.executions.get(principal.workspace_id, execution_id))


@router.get("/{execution_id}/waves", response_model=WavesPublic)
async def execution_waves(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
    agents: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> WavesPublic:
    """A schedule preview: which nodes can run together, wave by wave, under dependencies,
    claims and min(agents, concurrency); and the critical path."""
    ex = await engine.executions.get(principal.workspace_id, execution_id)
    count = agents or ex.concurrency
    waves = await engine.executions.waves(principal.workspace_id, execution_id, count)
    return WavesPublic.of(waves, count)


@router.get("/{execution_id}/events", response_model=dict[str, list[EventPublic]])
async def execution_events(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> dict[str, list[EventPublic]]:
    """The execution's own events (``execution.*``, ``task.*``, ``lock.contended``) by seq."""
    events = await engine.executions.events(
        principal.workspace_id, execution_id, after=after, limit=limit
    )
    return {"items": [EventPublic.of(e) for e in events]}


@router.get("/{execution_id}/debug")
async def execution_debug(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
) -> dict[str, Any]:
    """What the scheduler sees: ready queue, running nodes, the repository's lock table with
    owners and modes, the wait-for graph, and the last 50 events."""
    debug = await engine.executions.debug(principal.workspace_id, execution_id)
    return {
        "execution": ExecutionPublic.of(debug.execution, with_nodes=False).model_dump(mode="json"),
        "ready": debug.ready,
        "running": debug.running,
        "locks": debug.locks,
        "wait_for": debug.wait_for,
        "events": [EventPublic.of(e).model_dump(mode="json") for e in debug.events],
    }


@router.get("/{execution_id}/metrics")
async def execution_metrics(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
) -> dict[str, Any]:
    return await engine.executions.metrics(principal.workspace_id, execution_id)


@router.post("/{execution_id}/next", response_model=NextPublic)
async def next_node(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
    body: NextRequest | None = None,
) -> NextPublic:
    """Pull mode: the next node that may start now (dependencies done, claims locked, within
    the concurrency limit), leased to the caller; ``null`` when none may start."""
    owner = (body.lease_owner if body else None) or principal.actor
    grants = await engine.executions.next_nodes(
        principal.workspace_id,
        execution_id,
        lease_owner=owner,
        actor=principal.actor,
        limit=body.limit if body else 1,
    )
    taken = [GrantPublic.of(g) for g in grants]
    return NextPublic(node=taken[0] if taken else None, nodes=taken)


@router.post(
    "/{execution_id}/report",
    response_model=ExecutionPublic,
    description="The execution with node counts; its nodes are left out (GET it for them).",
)
async def report_nodes(
    execution_id: UUID,
    body: NodeReport,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
) -> ExecutionPublic:
    """Pull mode: several nodes completed or failed, recorded in one transaction; nothing is
    recorded when any of them may not move (409) or is unknown (404)."""
    outcomes = [NodeOutcome(node, ok=True) for node in body.completed]
    outcomes += [NodeOutcome(f.node, ok=False, error=f.error) for f in body.failed]
    ex = await engine.executions.finish_nodes(
        principal.workspace_id,
        execution_id,
        outcomes,
        actor=principal.actor,
        lease_owner=body.lease_owner,
    )
    return ExecutionPublic.of(ex)


@router.post(
    "/{execution_id}/nodes/{node_id}/complete",
    response_model=ExecutionPublic,
    description="The execution with node counts; its nodes are left out (GET it for them).",
)
async def complete_node(
    execution_id: UUID,
    node_id: str,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
    body: NodeComplete | None = None,
) -> ExecutionPublic:
    ex = await engine.executions.complete_node(
        principal.workspace_id,
        execution_id,
        node_id,
        actor=principal.actor,
        result=body.result if body else None,
        lease_owner=body.lease_owner if body else None,
    )
    return ExecutionPublic.of(ex)


@router.post(
    "/{execution_id}/nodes/{node_id}/fail",
    response_model=ExecutionPublic,
    description="The execution with node counts; its nodes are left out (GET it for them).",
)
async def fail_node(
    execution_id: UUID,
    node_id: str,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
    body: NodeFail | None = None,
) -> ExecutionPublic:
    ex = await engine.executions.fail_node(
        principal.workspace_id,
        execution_id,
        node_id,
        actor=principal.actor,
        error=body.error if body else None,
        lease_owner=body.lease_owner if body else None,
    )
    return ExecutionPublic.of(ex)


@router.get(
    "/{execution_id}/stream",
    response_class=StreamingResponse,
    responses={204: {"description": "resumed after the last event of an ended execution"}},
)
async def stream_execution_events(
    execution_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_READ)],
    last_event_id: Annotated[str | None, Query(description="resume after this seq")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """SSE: the execution's own events as they happen (``id:`` is the execution's seq), after
    a backfill of what was missed, ending with ``stream.complete`` once it has ended."""
    after = resume_point(last_event_id_header, last_event_id, MAX_SEQ)
    ex = await engine.executions.get(principal.workspace_id, execution_id)  # 404 first
    if after and ex.status in TERMINAL_EXECUTION_STATUSES and after >= ex.last_event_seq:
        return Response(status_code=204)
    batches = execution_event_batches(
        engine,
        execution_id,
        after_seq=after,
        ping_s=engine.settings.sse_ping_interval.total_seconds(),
    )
    return EventStreamResponse(_sse(batches))


async def _sse(batches: AsyncIterator[list[ExecutionItem]]) -> AsyncIterator[bytes]:
    yield RETRY_FRAME
    async for batch in batches:
        frames = []
        for item in batch:
            if isinstance(item, Ping):
                frames.append(PING_FRAME)
            elif isinstance(item, ExecutionComplete):
                data = json.dumps({"execution_id": str(item.execution_id), "status": item.status})
                frames.append(format_sse_event(event="stream.complete", data_str=data))
            else:
                frames.append(sse_frame(item, by_seq=True))
        yield b"".join(frames)


# Last: the catch-all action segment must not shadow /next and /nodes/... above.
@router.post("/{execution_id}/{action}", response_model=ExecutionPublic)
async def control_execution(
    execution_id: UUID,
    action: Literal["start", "pause", "resume", "abort"],
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.EXECUTIONS_WRITE)],
) -> ExecutionPublic:
    """start a planned execution; pause (running nodes finish, none start); resume; abort
    (running jobs are cancelled, locks released, the rest cancelled)."""
    do = {
        "start": engine.executions.start,
        "pause": engine.executions.pause,
        "resume": engine.executions.resume,
        "abort": engine.executions.abort,
    }[action]
    return ExecutionPublic.of(await do(principal.workspace_id, execution_id, actor=principal.actor))
