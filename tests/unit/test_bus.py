"""The in-process event bus: filters, fan-out, bounded buffers and slow-consumer drops.

Pure asyncio: events are built by hand, no database.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from stitchwork.bus.base import EventFilter, SubscriptionClosed
from stitchwork.bus.memory import InProcessBus, MemorySubscription
from stitchwork.domain.events import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB_A, JOB_B = uuid.uuid4(), uuid.uuid4()
WS_A, WS_B = uuid.uuid4(), uuid.uuid4()
EXEC_A = uuid.uuid4()

_ids = itertools.count(1)


def _event(
    type_: str = "step.output",
    *,
    job_id: uuid.UUID | None = JOB_A,
    workspace_id: uuid.UUID | None = WS_A,
    execution_id: uuid.UUID | None = None,
    seq: int | None = None,
    **payload: Any,
) -> Event:
    event_id = next(_ids)
    return Event(
        id=event_id,
        job_id=job_id,
        seq=seq if seq is not None else event_id,
        type=type_,
        actor="test",
        payload=payload,
        created_at=T0,
        workspace_id=workspace_id,
        execution_id=execution_id,
    )


async def _drain(sub: MemorySubscription) -> list[Event]:
    """Everything buffered right now, without waiting."""
    out = []
    while (event := await sub.get(timeout_s=0)) is not None:
        out.append(event)
    return out


# -- filters -----------------------------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    everything = EventFilter()
    assert everything.matches(_event("job.started"))
    assert everything.matches(_event("execution.started", job_id=None, execution_id=EXEC_A))


def test_filter_by_job() -> None:
    only_a = EventFilter(job_id=JOB_A)
    assert only_a.matches(_event(job_id=JOB_A))
    assert not only_a.matches(_event(job_id=JOB_B))
    assert not only_a.matches(_event(job_id=None, execution_id=EXEC_A))


def test_filter_by_workspace() -> None:
    only_a = EventFilter(workspace_id=WS_A)
    assert only_a.matches(_event(workspace_id=WS_A))
    assert not only_a.matches(_event(workspace_id=WS_B))
    assert not only_a.matches(_event(workspace_id=None))


def test_filter_by_execution() -> None:
    only_a = EventFilter(execution_id=EXEC_A)
    assert only_a.matches(_event("task.ready", execution_id=EXEC_A))
    assert not only_a.matches(_event("task.ready", execution_id=uuid.uuid4()))
    assert not only_a.matches(_event("task.ready", execution_id=None))


@pytest.mark.parametrize(
    ("patterns", "type_", "expected"),
    [
        (("step.*",), "step.output", True),
        (("step.*",), "step.started", True),
        (("step.*",), "job.started", False),
        (("step.*",), "steps.output", False),
        (("job.started",), "job.started", True),
        (("job.started",), "job.started2", False),
        (("job.?tarted",), "job.started", True),
        (("ai.tokens_used",), "ai.tokens_used", True),
        (("ai.tokens_used",), "ai.tokensXused", False),
        (("job.completed", "step.*"), "step.failed", True),
        (("job.completed", "step.*"), "job.failed", False),
        (("STEP.*",), "step.output", False),
    ],
)
def test_filter_by_type_glob(patterns: tuple[str, ...], type_: str, expected: bool) -> None:
    assert EventFilter(types=patterns).matches(_event(type_)) is expected


def test_filter_fields_combine_with_and() -> None:
    wanted = EventFilter(job_id=JOB_A, workspace_id=WS_A, types=("step.*",))
    assert wanted.matches(_event("step.output"))
    assert not wanted.matches(_event("job.started"))
    assert not wanted.matches(_event("step.output", job_id=JOB_B))
    assert not wanted.matches(_event("step.output", workspace_id=WS_B))


async def test_subscriber_receives_only_events_its_filter_matches() -> None:
    bus = InProcessBus()
    steps_of_a = bus.subscribe(EventFilter(job_id=JOB_A, types=("step.*",)))
    wanted = [_event("step.started"), _event("step.output")]
    await bus.publish(
        [wanted[0], _event("job.started"), _event("step.output", job_id=JOB_B), wanted[1]]
    )
    assert await _drain(steps_of_a) == wanted


# -- fan-out -----------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_publish_order() -> None:
    bus = InProcessBus()
    subs = [bus.subscribe(EventFilter()) for _ in range(50)]
    first = [_event(n=i) for i in range(10)]
    second = [_event(n=i) for i in range(10, 25)]
    await bus.publish(first)
    await bus.publish(second)
    for sub in subs:
        assert await _drain(sub) == first + second


async def test_subscriber_waiting_in_get_is_woken_by_publish() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    waiting = asyncio.create_task(sub.get(timeout_s=5))
    await asyncio.sleep(0)  # let it block
    event = _event()
    await bus.publish([event])
    assert await asyncio.wait_for(waiting, 1) == event


async def test_get_returns_none_after_its_timeout() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    assert await sub.get(timeout_s=0.01) is None
    assert sub.closed_reason is None


async def test_async_for_yields_events_as_they_are_published() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    events = [_event(n=i) for i in range(5)]

    async def collect() -> list[Event]:
        got = []
        async for event in sub:
            got.append(event)
            if len(got) == len(events):
                break
        return got

    reader = asyncio.create_task(collect())
    for event in events:
        await bus.publish([event])
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reader, 1) == events


# -- slow consumers ----------------------------------------------------------------------------


async def test_subscriber_that_never_reads_is_dropped_once_its_buffer_is_full() -> None:
    bus = InProcessBus()
    slow = bus.subscribe(EventFilter(), buffer=10)
    reader = bus.subscribe(EventFilter(), buffer=10)
    received: list[Event] = []
    published: list[Event] = []
    for i in range(30):
        event = _event(n=i)
        published.append(event)
        await bus.publish([event])
        received.extend(await _drain(reader))  # keeps up, one event at a time
        if i < 10:
            assert slow.closed_reason is None, f"dropped after only {i + 1} events"

    # The reader is unaffected by its slow neighbour.
    assert received == published
    assert reader.closed_reason is None
    # The slow one was dropped with a reason naming it a slow consumer...
    assert slow.closed_reason is not None
    assert "slow consumer" in slow.closed_reason
    # ...its backlog was freed at once, and the bus no longer delivers to it.
    assert slow.pending == 0
    assert bus.subscriber_count == 1
    with pytest.raises(SubscriptionClosed) as info:
        await slow.get(timeout_s=0)
    assert "slow consumer" in info.value.reason
    assert info.value.last_event is None  # it never read anything


async def test_dropped_subscriber_reports_the_last_event_it_received() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter(), buffer=3)
    events = [_event(n=i) for i in range(10)]
    await bus.publish(events[:2])
    assert await sub.get(timeout_s=0) == events[0]
    await bus.publish(events[2:])  # 1 still buffered + 8 more: overflows

    with pytest.raises(SubscriptionClosed) as info:
        await sub.get(timeout_s=0)
    assert info.value.last_event == events[0]  # resume from here by replaying the database


async def test_async_for_over_a_dropped_subscription_raises_subscription_closed() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter(), buffer=2)
    await bus.publish([_event(n=i) for i in range(5)])

    async def consume() -> list[Event]:
        return [event async for event in sub]

    with pytest.raises(SubscriptionClosed, match="slow consumer"):
        await consume()  # its backlog was freed: nothing is yielded before the error


async def test_subscriber_blocked_in_get_is_woken_when_dropped() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter(), buffer=1)
    waiting = asyncio.create_task(sub.get(timeout_s=5))
    await asyncio.sleep(0)  # blocked in get()
    # One publish, two events: the second overflows the buffer before the getter runs.
    await bus.publish([_event("job.started"), _event("job.progress")])
    with pytest.raises(SubscriptionClosed, match="slow consumer"):
        await asyncio.wait_for(waiting, 1)


async def test_publish_never_waits_for_a_subscriber() -> None:
    bus = InProcessBus()
    idle = [bus.subscribe(EventFilter(), buffer=5) for _ in range(3)]
    # A publish is one step of the event loop: it completes without yielding even when
    # every subscriber is idle and their buffers overflow.
    publish = bus.publish([_event(n=i) for i in range(100)])
    with pytest.raises(StopIteration):
        publish.send(None)
    assert all(s.closed_reason is not None for s in idle)
    assert bus.subscriber_count == 0


async def test_one_subscriber_raising_does_not_stop_delivery_to_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = InProcessBus()
    before = bus.subscribe(EventFilter())
    broken = bus.subscribe(EventFilter())
    after = bus.subscribe(EventFilter())

    def explode(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    monkeypatch.setattr(broken, "offer", explode)
    events = [_event(n=i) for i in range(3)]
    await bus.publish(events)

    assert await _drain(before) == events
    assert await _drain(after) == events
    # The broken subscriber is closed and no longer on the bus.
    assert broken.closed_reason is not None
    assert bus.subscriber_count == 2
    more = [_event(n=9)]
    await bus.publish(more)
    assert await _drain(after) == more


# -- closing -----------------------------------------------------------------------------------


async def test_close_ends_async_for_without_an_error() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    got: list[Event] = []

    async def consume() -> None:
        async for event in sub:
            got.append(event)

    consumer = asyncio.create_task(consume())
    event = _event()
    await bus.publish([event])
    await asyncio.sleep(0.01)
    sub.close()
    await asyncio.wait_for(consumer, 1)  # returns normally: no SubscriptionClosed
    assert got == [event]
    assert sub.closed_reason == "closed by subscriber"


async def test_closed_subscription_is_removed_from_the_bus_and_gets_nothing_more() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    other = bus.subscribe(EventFilter())
    sub.close()
    assert bus.subscriber_count == 1
    await bus.publish([_event()])
    assert sub.pending == 0
    assert other.pending == 1
    with pytest.raises(SubscriptionClosed, match="closed by subscriber"):
        await sub.get(timeout_s=0)


async def test_close_is_idempotent() -> None:
    bus = InProcessBus()
    sub = bus.subscribe(EventFilter())
    sub.close()
    sub.close()
    assert sub.closed_reason == "closed by subscriber"
    assert bus.subscriber_count == 0


async def test_default_buffer_applies_when_none_is_given() -> None:
    bus = InProcessBus(default_buffer=4)
    sub = bus.subscribe(EventFilter())
    await bus.publish([_event(n=i) for i in range(4)])
    assert (sub.pending, sub.closed_reason) == (4, None)
    await bus.publish([_event()])
    assert sub.closed_reason is not None
    assert "4 undelivered events" in sub.closed_reason
