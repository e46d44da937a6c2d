"""``/api/v1/queues``: pause state of each queue with the caller's workspace's depth; pause
and resume.

A queue serves every workspace, so pausing one stops everybody's jobs: pause and resume need
``queues:write``, which only the admin role has. The counts are the caller's workspace's own.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from stitchwork.api.deps import EngineDep, require
from stitchwork.api.schemas import QueuePublic
from stitchwork.services.auth import Principal, Scope

router = APIRouter(prefix="/queues", tags=["queues"])

QueueName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


@router.get("", response_model=list[QueuePublic])
async def list_queues(
    engine: EngineDep, principal: Annotated[Principal, require(Scope.QUEUES_READ)]
) -> list[QueuePublic]:
    """Every queue's pause state, with the caller's workspace's queued and running jobs."""
    return [QueuePublic.of(q) for q in await engine.queue.list_queues(principal.workspace_id)]


async def _one(engine: EngineDep, principal: Principal, name: str) -> QueuePublic:
    queues = {q.name: q for q in await engine.queue.list_queues(principal.workspace_id)}
    return QueuePublic.of(queues[name])


@router.post("/{name}/pause", response_model=QueuePublic)
async def pause_queue(
    name: QueueName,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.QUEUES_WRITE)],
) -> QueuePublic:
    """Workers stop taking jobs from this queue, for every workspace; running jobs go on."""
    await engine.queue.pause(name)
    return await _one(engine, principal, name)


@router.post("/{name}/resume", response_model=QueuePublic)
async def resume_queue(
    name: QueueName,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.QUEUES_WRITE)],
) -> QueuePublic:
    await engine.queue.resume(name)
    return await _one(engine, principal, name)
