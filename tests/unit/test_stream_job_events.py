"""A job stream with a sink (``JobEvents.follow``): live events go straight to the writer while
the stream waits; a gap, the job's end or a declining writer come out of ``batches`` instead,
so every event is delivered once and in seq order either way. An in-memory store stands in
for the database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from stitchwork.api.streaming import Complete, JobEvents, StreamItem
from stitchwork.bus.memory import InProcessBus
from stitchwork.domain.events import Event

JOB = uuid.uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(seq: int, type_: str = "step.output") -> Event:
    return Event(
        id=1000 + seq,
        job_id=JOB,
        seq=seq,
        type=type_,
        actor="test",
        payload={"status": "completed"} if type_ == "job.completed" else {"n": seq},
        created_at=T0,
    )


@dataclass
class _Store:
    """The job's committed events."""

    events: list[Event] = field(default_factory=list)

    async def list_events(self, job_id: uuid.UUID, *, after: int, limit: int) -> list[Event]:
        return [e for e in self.events if e.seq > after][:limit]

    async def get_job(self, job_id: uuid.UUID) -> Any:
        # Running: each test's job ends with a live terminal event.
        last = self.events[-1].seq if self.events else 0
        return SimpleNamespace(status="running", last_event_seq=last)


class _Writer:
    def __init__(self) -> None:
        self.written: list[Event] = []
        self.accepting = True

    def __call__(self, events: list[Event]) -> bool:
        if not self.accepting:
            return False
        self.written += events
        return True


@pytest.fixture
def world() -> tuple[Any, _Store, InProcessBus]:
    store = _Store([_event(1, "job.created")])
    bus = InProcessBus(flush_interval_s=0)
    return SimpleNamespace(store=store, bus=bus), store, bus


async def _collect(batches: AsyncIterator[list[StreamItem]], into: list[StreamItem]) -> None:
    async for batch in batches:
        into.extend(batch)


async def _commit(store: _Store, bus: InProcessBus, *events: Event, publish: bool = True) -> None:
    store.events += events
    if publish:
        await bus.publish(list(events))
    await asyncio.sleep(0.01)


def _seqs(items: list[StreamItem], written: list[Event]) -> list[int]:
    return sorted([i.seq for i in items if isinstance(i, Event)] + [e.seq for e in written])


async def test_live_events_go_to_the_writer_and_the_end_through_batches(
    world: tuple[Any, _Store, InProcessBus],
) -> None:
    engine, store, bus = world
    live = JobEvents(engine, JOB, ping_s=5)
    writer = _Writer()
    live.follow(writer)
    items: list[StreamItem] = []
    reader = asyncio.create_task(_collect(live.batches(), items))
    await asyncio.sleep(0.01)  # backfill (seq 1) read; waiting for live events

    await _commit(store, bus, _event(2), _event(3))
    await _commit(store, bus, _event(4))
    await _commit(store, bus, _event(5, "job.completed"))
    await asyncio.wait_for(reader, 1)

    assert [e.seq for e in writer.written] == [2, 3, 4]
    assert [i.seq for i in items if isinstance(i, Event)] == [1, 5]
    assert items[-1] == Complete(JOB, "completed")
    assert live.last == 5


async def test_a_gap_is_read_from_the_database_by_the_stream_not_skipped_by_the_sink(
    world: tuple[Any, _Store, InProcessBus],
) -> None:
    engine, store, bus = world
    live = JobEvents(engine, JOB, ping_s=5)
    writer = _Writer()
    live.follow(writer)
    items: list[StreamItem] = []
    reader = asyncio.create_task(_collect(live.batches(), items))
    await asyncio.sleep(0.01)

    await _commit(store, bus, _event(2))
    await _commit(store, bus, _event(3), publish=False)  # never reached this process's bus
    await _commit(store, bus, _event(4))
    await _commit(store, bus, _event(5))
    await _commit(store, bus, _event(6, "job.completed"))
    await asyncio.wait_for(reader, 1)

    assert _seqs(items, writer.written) == [1, 2, 3, 4, 5, 6]
    delivered = [i.seq for i in items if isinstance(i, Event)]
    assert {3, 4} <= set(delivered)  # the gap and the event that showed it, by the stream
    assert 5 in [e.seq for e in writer.written]  # then the sink again


async def test_what_the_writer_declines_comes_out_of_batches_in_order(
    world: tuple[Any, _Store, InProcessBus],
) -> None:
    engine, store, bus = world
    live = JobEvents(engine, JOB, ping_s=5)
    writer = _Writer()
    live.follow(writer)
    items: list[StreamItem] = []
    reader = asyncio.create_task(_collect(live.batches(), items))
    await asyncio.sleep(0.01)

    await _commit(store, bus, _event(2))
    writer.accepting = False  # e.g. the socket must drain first
    await _commit(store, bus, _event(3), _event(4))
    writer.accepting = True
    await _commit(store, bus, _event(5))
    await _commit(store, bus, _event(6, "job.completed"))
    await asyncio.wait_for(reader, 1)

    assert [e.seq for e in writer.written] == [2, 5]
    assert [i.seq for i in items if isinstance(i, Event)] == [1, 3, 4, 6]


async def test_a_type_filter_applies_to_what_the_sink_writes(
    world: tuple[Any, _Store, InProcessBus],
) -> None:
    engine, store, bus = world
    live = JobEvents(engine, JOB, types=("step.*",), ping_s=5)
    writer = _Writer()
    live.follow(writer)
    items: list[StreamItem] = []
    reader = asyncio.create_task(_collect(live.batches(), items))
    await asyncio.sleep(0.01)

    await _commit(store, bus, _event(2), _event(3, "job.progress"), _event(4))
    await _commit(store, bus, _event(5, "job.completed"))
    await asyncio.wait_for(reader, 1)

    assert [e.seq for e in writer.written] == [2, 4]
    assert [i for i in items if isinstance(i, Event)] == []  # job.* filtered out
    assert items == [Complete(JOB, "completed")]
    assert live.last == 5
