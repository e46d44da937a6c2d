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


@pytest.fixture(params=["everything", "one job"])
def watch(request: pytest.FixtureRequest) -> EventFilter:
    """What the subscribers of a test watch: every event (a queue each), or the one job all of
    its events belong to (readers of the job's shared feed). Both behave the same."""
    return EventFilter() if request.param == "everything" else EventFilter(job_id=JOB_A)


# -- fan-out -----------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_publish_order(watch: EventFilter) -> None:
    bus = InProcessBus()
    subs = [bus.subscribe(watch) for _ in range(50)]
    first = [_event(n=i) for i in range(10)]
    second = [_event(n=i) for i in range(10, 25)]
    await bus.publish(first)
    await bus.publish(second)
    for sub in subs:
        assert await _drain(sub) == first + second


async def test_subscriber_waiting_in_get_is_woken_by_publish(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
    waiting = asyncio.create_task(sub.get(timeout_s=5))
    await asyncio.sleep(0)  # let it block
    event = _event()
    await bus.publish([event])
    assert await asyncio.wait_for(waiting, 1) == event


async def test_get_returns_none_after_its_timeout(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
    assert await sub.get(timeout_s=0.01) is None
    assert sub.closed_reason is None


async def test_async_for_yields_events_as_they_are_published(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
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


async def test_subscriber_that_never_reads_is_dropped_once_its_buffer_is_full(
    watch: EventFilter,
) -> None:
    bus = InProcessBus()
    slow = bus.subscribe(watch, buffer=10)
    reader = bus.subscribe(watch, buffer=10)
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


async def test_dropped_subscriber_reports_the_last_event_it_received(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch, buffer=3)
    events = [_event(n=i) for i in range(10)]
    await bus.publish(events[:2])
    assert await sub.get(timeout_s=0) == events[0]
    await bus.publish(events[2:])  # 1 still buffered + 8 more: overflows

    with pytest.raises(SubscriptionClosed) as info:
        await sub.get(timeout_s=0)
    assert info.value.last_event == events[0]  # resume from here by replaying the database


async def test_async_for_over_a_dropped_subscription_raises_subscription_closed(
    watch: EventFilter,
) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch, buffer=2)
    await bus.publish([_event(n=i) for i in range(5)])

    async def consume() -> list[Event]:
        return [event async for event in sub]

    with pytest.raises(SubscriptionClosed, match="slow consumer"):
        await consume()  # its backlog was freed: nothing is yielded before the error


async def test_subscriber_blocked_in_get_is_woken_when_dropped(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch, buffer=1)
    waiting = asyncio.create_task(sub.get(timeout_s=5))
    await asyncio.sleep(0)  # blocked in get()
    # One publish, two events: the second overflows the buffer before the getter runs.
    await bus.publish([_event("job.started"), _event("job.progress")])
    with pytest.raises(SubscriptionClosed, match="slow consumer"):
        await asyncio.wait_for(waiting, 1)


async def test_publish_never_waits_for_a_subscriber(watch: EventFilter) -> None:
    bus = InProcessBus()
    idle = [bus.subscribe(watch, buffer=5) for _ in range(3)]
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

    def explode(events: list[Event]) -> None:
        raise RuntimeError("subscriber bug")

    monkeypatch.setattr(broken, "offer_all", explode)
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


async def test_close_ends_async_for_without_an_error(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
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


async def test_closed_subscription_is_removed_from_the_bus_and_gets_nothing_more(
    watch: EventFilter,
) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
    other = bus.subscribe(watch)
    sub.close()
    assert bus.subscriber_count == 1
    await bus.publish([_event()])
    assert sub.pending == 0
    assert other.pending == 1
    with pytest.raises(SubscriptionClosed, match="closed by subscriber"):
        await sub.get(timeout_s=0)


async def test_close_is_idempotent(watch: EventFilter) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
    sub.close()
    sub.close()
    assert sub.closed_reason == "closed by subscriber"
    assert bus.subscriber_count == 0


async def test_default_buffer_applies_when_none_is_given(watch: EventFilter) -> None:
    bus = InProcessBus(default_buffer=4)
    sub = bus.subscribe(watch)
    await bus.publish([_event(n=i) for i in range(4)])
    assert (sub.pending, sub.closed_reason) == (4, None)
    await bus.publish([_event()])
    assert sub.closed_reason is not None
    assert "4 undelivered events" in sub.closed_reason


# -- batches and wake-ups ------------------------------------------------------------------------


async def test_get_batch_returns_everything_queued_in_order_then_waits(watch: EventFilter) -> None:
    bus = InProcessBus(flush_interval_s=0)
    sub = bus.subscribe(watch)
    events = [_event(n=i) for i in range(7)]
    await bus.publish(events[:3])
    await bus.publish(events[3:])
    assert await sub.get_batch(timeout_s=0) == events
    assert await sub.get_batch(timeout_s=0) == []
    assert await sub.get_batch(timeout_s=0.01) == []  # the timeout passed, nothing came


async def test_get_batch_after_close_returns_what_was_queued_then_raises(
    watch: EventFilter,
) -> None:
    bus = InProcessBus()
    sub = bus.subscribe(watch)
    events = [_event(n=i) for i in range(2)]
    await bus.publish(events)
    sub.close()
    assert await sub.get_batch(timeout_s=0) == events
    with pytest.raises(SubscriptionClosed, match="closed by subscriber"):
        await sub.get_batch(timeout_s=0)


async def test_waiting_subscribers_are_woken_together_once_per_flush_interval(
    watch: EventFilter,
) -> None:
    bus = InProcessBus(flush_interval_s=0.05, flush_s_per_subscriber=1)
    subs = [bus.subscribe(watch) for _ in range(3)]
    waiting = [asyncio.create_task(s.get_batch(timeout_s=5)) for s in subs]
    await asyncio.sleep(0)
    first = _event(n=0)
    await bus.publish([first])  # after a quiet interval: at once
    assert [await asyncio.wait_for(w, 0.04) for w in waiting] == [[first]] * 3

    waiting = [asyncio.create_task(s.get_batch(timeout_s=5)) for s in subs]
    await asyncio.sleep(0)
    close_behind = [_event(n=i) for i in range(1, 4)]
    for event in close_behind:  # right after the first: gathered until the interval ends
        await bus.publish([event])
        await asyncio.sleep(0.005)
    assert not any(w.done() for w in waiting)
    assert [await asyncio.wait_for(w, 1) for w in waiting] == [close_behind] * 3


async def test_a_subscriber_with_events_queued_does_not_wait_for_the_flush(
    watch: EventFilter,
) -> None:
    bus = InProcessBus(flush_interval_s=10)
    sub = bus.subscribe(watch)
    first = _event(n=0)
    await bus.publish([first])  # wakes nobody and starts an interval
    more = [_event(n=i) for i in range(1, 3)]
    await bus.publish(more)
    assert await asyncio.wait_for(sub.get_batch(timeout_s=5), 0.5) == [first, *more]


async def test_a_job_filter_gets_only_its_jobs_events_from_mixed_publishes() -> None:
    bus = InProcessBus()
    of_a = bus.subscribe(EventFilter(job_id=JOB_A))
    of_b_steps = bus.subscribe(EventFilter(job_id=JOB_B, types=("step.*",)))
    everything = bus.subscribe(EventFilter())
    mixed = [
        _event("step.output", job_id=JOB_A),
        _event("step.output", job_id=JOB_B),
        _event("job.started", job_id=JOB_B),
        _event("task.ready", job_id=None, execution_id=EXEC_A),
        _event("job.completed", job_id=JOB_A),
    ]
    await bus.publish(mixed)
    assert await of_a.get_batch(timeout_s=0) == [mixed[0], mixed[4]]
    assert await of_b_steps.get_batch(timeout_s=0) == [mixed[1]]
    assert await everything.get_batch(timeout_s=0) == mixed


async def test_timeouts_of_successive_waits_each_count_from_their_own_start(
    watch: EventFilter,
) -> None:
    bus = InProcessBus(flush_interval_s=0)
    sub = bus.subscribe(watch)
    loop = asyncio.get_running_loop()
    assert await sub.get_batch(timeout_s=0.05) == []  # arms the timer
    waiter = asyncio.create_task(sub.get_batch(timeout_s=0.2))
    started = loop.time()
    await asyncio.sleep(0.1)  # past the first wait's deadline: not woken
    assert not waiter.done()
    assert await waiter == []
    assert loop.time() - started >= 0.19
    event = _event()
    waiter = asyncio.create_task(sub.get_batch())  # no timeout: only an event ends it
    await asyncio.sleep(0.25)
    assert not waiter.done()
    await bus.publish([event])
    assert await asyncio.wait_for(waiter, 1) == [event]


async def test_a_late_wake_up_whose_events_were_taken_does_not_end_the_next_wait(
    watch: EventFilter,
) -> None:
    bus = InProcessBus(flush_interval_s=0.05, flush_s_per_subscriber=1)
    sub = bus.subscribe(watch)
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(sub.get_batch(timeout_s=5))
    await asyncio.sleep(0)
    events = [_event(n=i) for i in range(3)]
    await bus.publish(events[:2])  # wakes it (after a quiet interval: at once)...
    await asyncio.sleep(0)  # ...the wake-up is made, the getter has not run yet
    await bus.publish(events[2:])  # arrives before the getter runs: taken with the rest
    assert await waiting == events

    started = loop.time()
    assert await sub.get_batch(timeout_s=0.2) == []  # only its own timeout ends it
    assert loop.time() - started >= 0.19


# -- sinks ---------------------------------------------------------------------------------------


async def _parked(
    sub: MemorySubscription, timeout_s: float | None = 5
) -> asyncio.Task[list[Event]]:
    """A consumer waiting in get_batch."""
    task = asyncio.create_task(sub.get_batch(timeout_s=timeout_s))
    await asyncio.sleep(0)
    return task


async def test_a_sink_takes_the_events_while_its_consumer_waits(watch: EventFilter) -> None:
    bus = InProcessBus(flush_interval_s=0.01)
    sub = bus.subscribe(watch)
    taken: list[list[Event]] = []
    sub.sink = lambda events: taken.append(events) or True
    consumer = await _parked(sub)
    events = [_event(n=i) for i in range(3)]
    await bus.publish(events[:1])
    await bus.publish(events[1:])
    await asyncio.sleep(0.05)
    assert [e for batch in taken for e in batch] == events
    assert not consumer.done()  # never woken: the sink wrote everything
    assert sub.pending == 0
    consumer.cancel()


async def test_what_a_sink_declines_or_fails_on_wakes_the_consumer(watch: EventFilter) -> None:
    bus = InProcessBus(flush_interval_s=0)
    declines = bus.subscribe(watch)
    declines.sink = lambda events: False
    fails = bus.subscribe(watch)

    def broken(events: list[Event]) -> bool:
        raise RuntimeError("sink bug")

    fails.sink = broken
    consumers = [await _parked(declines), await _parked(fails)]
    event = _event()
    await bus.publish([event])
    assert [await asyncio.wait_for(c, 1) for c in consumers] == [[event], [event]]
    assert fails.closed_reason is None  # the consumer carries on without its sink


async def test_a_sink_is_not_used_while_its_consumer_is_busy(watch: EventFilter) -> None:
    bus = InProcessBus(flush_interval_s=0)
    sub = bus.subscribe(watch)
    taken: list[list[Event]] = []
    sub.sink = lambda events: taken.append(events) or True
    event = _event()
    await bus.publish([event])  # nobody waits in get_batch: the consumer may be writing
    assert taken == []
    assert await sub.get_batch(timeout_s=0) == [event]


async def test_sink_deliveries_keep_an_idle_timeout_from_expiring(watch: EventFilter) -> None:
    bus = InProcessBus(flush_interval_s=0)
    sub = bus.subscribe(watch)
    sub.sink = lambda events: True
    consumer = await _parked(sub, timeout_s=0.15)
    for i in range(4):  # events every 0.1 s: never idle for 0.15 s
        await asyncio.sleep(0.1)
        await bus.publish([_event(n=i)])
    assert not consumer.done()
    assert await asyncio.wait_for(consumer, 1) == []  # idle at last: its timeout


async def test_a_round_is_delivered_in_slices_between_which_others_run(watch: EventFilter) -> None:
    from stitchwork.bus.memory import ROUND_SLICE

    bus = InProcessBus(flush_interval_s=0.01)
    subs = [bus.subscribe(watch) for _ in range(ROUND_SLICE * 2 + 10)]
    delivered: list[int] = []
    for i, sub in enumerate(subs):
        sub.sink = lambda events, i=i: delivered.append(i) or True
    consumers = [await _parked(s) for s in subs]
    await bus.publish([_event()])
    seen = set()
    while len(delivered) < len(subs):
        seen.add(len(delivered))
        await asyncio.sleep(0)  # one loop iteration
    assert {ROUND_SLICE, ROUND_SLICE * 2} <= seen  # this ran between the slices
    assert delivered == list(range(len(subs)))  # each once, in order
    for consumer in consumers:
        consumer.cancel()


# -- a job's shared feed -------------------------------------------------------------------------


async def test_readers_of_one_job_each_read_from_their_own_position() -> None:
    bus = InProcessBus()
    early = bus.subscribe(EventFilter(job_id=JOB_A))
    first = [_event(n=i) for i in range(3)]
    await bus.publish(first)
    assert await early.get_batch(timeout_s=0) == first
    late = bus.subscribe(EventFilter(job_id=JOB_A))  # sees what is published from now on
    second = [_event(n=i) for i in range(3, 5)]
    await bus.publish(second)
    assert await late.get(timeout_s=0) == second[0]
    assert (early.pending, late.pending) == (2, 1)
    assert await early.get_batch(timeout_s=0) == second
    assert await late.get_batch(timeout_s=0) == second[1:]


async def test_the_feed_keeps_only_what_some_reader_has_yet_to_read() -> None:
    bus = InProcessBus(flush_interval_s=0.01, default_buffer=20)
    readers = [bus.subscribe(EventFilter(job_id=JOB_A)) for _ in range(3)]
    sinks: list[list[Event]] = [[], []]
    readers[0].sink = lambda events: sinks[0].extend(events) or True
    readers[1].sink = lambda events: sinks[1].extend(events) or True
    consumers = [asyncio.create_task(r.get_batch(timeout_s=5)) for r in readers[:2]]
    await asyncio.sleep(0)
    feed = bus._by_job[JOB_A]
    for i in range(15):  # the third reader reads nothing
        await bus.publish([_event(n=i)])
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.05)
    assert len(sinks[0]) == len(sinks[1]) == 15
    assert len(feed.events) == 15  # held for the third reader only
    for i in range(15, 25):  # past the third reader's buffer of 20: it is dropped
        await bus.publish([_event(n=i)])
    await asyncio.sleep(0.05)
    assert (readers[2].closed_reason or "").startswith("slow consumer")
    assert readers[2].pending == 0
    assert feed.events == []  # the other two have read everything
    for reader in readers[:2]:
        reader.close()
    assert JOB_A not in bus._by_job  # the last subscriber gone: the feed too
    for consumer in consumers:
        consumer.cancel()


async def test_readers_and_type_filtered_subscribers_of_one_job_get_their_events() -> None:
    bus = InProcessBus()
    reader = bus.subscribe(EventFilter(job_id=JOB_A))
    steps = bus.subscribe(EventFilter(job_id=JOB_A, types=("step.*",)))
    events = [_event("job.started"), _event("step.started"), _event("step.output")]
    await bus.publish(events)
    assert await reader.get_batch(timeout_s=0) == events
    assert await steps.get_batch(timeout_s=0) == events[1:]
    reader.close()
    more = [_event("step.completed")]
    await bus.publish(more)
    assert await steps.get_batch(timeout_s=0) == more


async def test_the_flush_interval_is_shorter_with_few_subscribers() -> None:
    bus = InProcessBus(flush_interval_s=1, flush_s_per_subscriber=0.01)
    subs = [bus.subscribe(EventFilter()) for _ in range(3)]  # rounds 0.03 s apart, not 1 s
    loop = asyncio.get_running_loop()
    first = _event()
    waiting = [asyncio.create_task(s.get_batch(timeout_s=5)) for s in subs]
    await asyncio.sleep(0)
    await bus.publish([first])  # after a quiet interval: at once
    assert [await asyncio.wait_for(w, 1) for w in waiting] == [[first]] * 3

    waiting = [asyncio.create_task(s.get_batch(timeout_s=5)) for s in subs]
    await asyncio.sleep(0)
    started = loop.time()
    second = _event()
    await bus.publish([second])  # right after the first: at the end of the short interval
    assert [await asyncio.wait_for(w, 1) for w in waiting] == [[second]] * 3
    assert 0.02 <= loop.time() - started < 0.5
