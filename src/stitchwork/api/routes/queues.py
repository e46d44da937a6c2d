"""``/api/v1/queues``: depth and pause state of each queue; pause and resume."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from stitchwork.api.deps import EngineDep, PrincipalDep
from stitchwork.api.schemas import QueuePublic

router = APIRouter(prefix="/queues", tags=["queues"])

QueueName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]


@router.get("", response_model=list[QueuePublic])
async def list_queues(engine: EngineDep, _principal: PrincipalDep) -> list[QueuePublic]:
    return [QueuePublic.of(q) for q in await engine.queue.list_queues()]


async def _one(engine: EngineDep, name: str) -> QueuePublic:
    queues = {q.name: q for q in await engine.queue.list_queues()}
    return QueuePublic.of(queues[name])


@router.post("/{name}/pause", response_model=QueuePublic)
async def pause_queue(name: QueueName, engine: EngineDep, _principal: PrincipalDep) -> QueuePublic:
    """Workers stop taking jobs from this queue; running jobs go on."""
    await engine.queue.pause(name)
    return await _one(engine, name)


@router.post("/{name}/resume", response_model=QueuePublic)
async def resume_queue(name: QueueName, engine: EngineDep, _principal: PrincipalDep) -> QueuePublic:
    await engine.queue.resume(name)
    return await _one(engine, name)
