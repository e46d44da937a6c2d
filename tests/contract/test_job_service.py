"""Submission rules the service enforces for every caller (API, CLI, chat)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stitchwork.domain.jobs import NewJob
from stitchwork.errors import InvalidRequest
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend


@pytest.mark.parametrize("attempts", [0, -1, 101])
async def test_max_attempts_outside_1_to_100_is_refused_not_defaulted(
    engine: Engine, workspace_id: uuid.UUID, attempts: int
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await engine.jobs.submit(workspace_id, NewJob("noop", max_attempts=attempts), actor="t")

    assert raised.value.field == "max_attempts"
    assert await engine.store.list_jobs(workspace_id) == []


async def test_a_batch_with_one_invalid_job_stores_none_of_them(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    batch = [NewJob("noop"), NewJob("shell", {"command": ""}), NewJob("noop")]

    with pytest.raises(InvalidRequest) as raised:
        await engine.jobs.submit_many(workspace_id, batch, actor="t")

    assert raised.value.field == "payload.command"
    assert await engine.store.list_jobs(workspace_id) == []


async def test_pausing_a_new_queue_from_many_callers_at_once_succeeds(
    backend: Backend, engine: Engine
) -> None:
    others = [await backend.open_engine() for _ in range(4)]
    try:
        await asyncio.gather(*(e.queue.pause("builds") for e in [engine, *others]))
        queues = {q.name: q for q in await engine.queue.list_queues()}
        assert queues["builds"].paused
    finally:
        for other in others:
            await other.close()
