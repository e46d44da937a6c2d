"""The event tailer brings events committed by other processes into this process's bus."""

from __future__ import annotations

from stitchwork.bus.base import EventFilter
from stitchwork.bus.relay import LOOKBACK_IDS, SeqGaps
from stitchwork.domain.jobs import NewJob
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.tailer import EventTailer
from stitchwork.storage.event_log import SqlEventLog
from tests.conftest import Backend


async def _drain(subscription: object) -> list[int]:
    ids = []
    while (event := await subscription.get(timeout_s=0)) is not None:  # type: ignore[attr-defined]
        ids.append(event.id)
    return ids


async def test_events_of_another_process_reach_the_bus_once_and_local_ones_are_not_repeated(
    backend: Backend, engine: Engine
) -> None:
    other = await backend.open_engine()  # a separate process: its own pools and its own bus
    try:
        ws, _ = await engine.auth.ensure_workspace()
        tailer = EventTailer(engine.store, engine.bus, interval_s=1)
        assert await tailer.tail_once() == 0  # the first call only finds where "now" is
        subscription = engine.bus.subscribe(EventFilter(workspace_id=ws.id))

        local = await engine.jobs.submit(ws.id, NewJob("noop"), actor="here")
        remote = await other.jobs.submit(ws.id, NewJob("noop"), actor="there")
        live_before_tail = await _drain(subscription)

        assert await tailer.tail_once() == 2  # remote's job.created and job.queued
        assert await tailer.tail_once() == 0  # nothing is published twice
        tailed = await _drain(subscription)

        local_ids = [e.id for e in await engine.store.list_events(local.job.id)]
        remote_ids = [e.id for e in await engine.store.list_events(remote.job.id)]
        assert live_before_tail == local_ids  # published by this process at commit
        assert tailed == remote_ids  # brought in by the tailer, in id order
    finally:
        await other.close()


async def test_a_late_commit_below_the_lookback_is_filled_in_by_seq(
    backend: Backend, engine: Engine
) -> None:
    """Ids are handed out before commit: a transaction can commit ids far below ones already
    read. The tail then sees only the end of it; the gap is read by seq, in order."""
    other = await backend.open_engine()
    try:
        ws, _ = await engine.auth.ensure_workspace()
        tailer = EventTailer(
            engine.store, engine.bus, interval_s=1, gaps=SeqGaps(SqlEventLog(engine.db))
        )
        await tailer.tail_once()
        subscription = engine.bus.subscribe(EventFilter(workspace_id=ws.id))
        job = (await other.jobs.submit(ws.id, NewJob("noop"), actor="there")).job
        assert await tailer.tail_once() == 2  # job.created, job.queued: seq 1 and 2
        await other.store.cancel_job(job.id, workspace_id=ws.id, actor="there")  # seq 3
        # As if later ids had been read first: the cursor is past the lookback window.
        last = await engine.store.last_event_id()
        tailer.cursor = last + LOOKBACK_IDS  # the next read starts after seq 3's id
        await other.store.retry_job(job.id, workspace_id=ws.id, actor="there")  # seq 4
        await tailer.tail_once()
        events = await engine.store.list_events(job.id)
        assert await _drain(subscription) == [e.id for e in events]  # seq 1..4, in order
    finally:
        await other.close()
