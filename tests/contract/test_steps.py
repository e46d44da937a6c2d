"""The step store contract, on SQLite and Postgres: steps and their events, written only by
the worker holding the job's lease, each change with its event in one transaction, published
on the bus exactly once after commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import pytest

from stitchwork.bus.base import EventFilter
from stitchwork.bus.memory import MemorySubscription
from stitchwork.clock import FakeClock
from stitchwork.domain.events import Event, EventType
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.domain.steps import Step, StepPhase, StepStatus, StepType
from stitchwork.errors import Conflict, InvalidTransition
from stitchwork.runtime.engine import Engine
from stitchwork.storage.steps import OUTPUT_TAIL_CHARS, JobLost

LEASE = timedelta(seconds=30)
W1, W2 = "worker-1", "worker-2"


@pytest.fixture
async def job(clocked: Engine, clocked_ws: uuid.UUID) -> Job:
    """A job reserved by ``W1``: running, holding the lease, events 1..3 written."""
    await clocked.jobs.submit(clocked_ws, NewJob("noop"), actor="test")
    (reserved,) = await clocked.queue.reserve(W1, 1, LEASE)
    assert (reserved.status, reserved.lease_owner, reserved.last_event_seq) == (
        JobStatus.RUNNING,
        W1,
        3,
    )
    return reserved


@pytest.fixture
def bus_events(clocked: Engine, job: Job) -> MemorySubscription:
    """A subscription to the job's events, opened after the job was reserved."""
    return clocked.bus.subscribe(EventFilter(job_id=job.id))


async def _add(
    engine: Engine,
    job: Job,
    name: str = "build",
    *,
    type_: StepType = StepType.COMMAND,
    start: bool = True,
    worker: str = W1,
) -> Step:
    return await engine.steps.add_step(
        job.id, worker, name=name, phase=StepPhase.EXECUTION, type_=type_, start=start
    )


async def _events(engine: Engine, job: Job, *, after: int = 0) -> list[Event]:
    return await engine.store.list_events(job.id, after=after)


async def _received(sub: MemorySubscription) -> list[Event]:
    """What the bus delivered so far (publishing is synchronous: nothing is in flight)."""
    out = []
    while (event := await sub.get(timeout_s=0)) is not None:
        out.append(event)
    return out


async def _snapshot(engine: Engine, job: Job) -> tuple[Job, list[Step], list[Event]]:
    return (
        await engine.store.get_job(job.id),
        await engine.steps.list_steps(job.id),
        await _events(engine, job),
    )


# -- adding and starting steps -----------------------------------------------------------------


async def test_add_step_running_writes_step_started_with_the_jobs_next_seq(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job, "Install deps")

    assert (step.job_id, step.ordinal, step.name, step.status, step.attempt) == (
        job.id,
        1,
        "Install deps",
        StepStatus.RUNNING,
        1,
    )
    assert (step.phase, step.type) == (StepPhase.EXECUTION, StepType.COMMAND)
    assert step.started_at == step.created_at == clock.now()
    assert (step.completed_at, step.output_tail, step.error) == (None, None, None)

    (event,) = await _events(clocked, job, after=3)
    assert (event.seq, event.type, event.step_id, event.actor) == (
        4,
        "step.started",
        step.id,
        W1,
    )
    assert event.workspace_id == job.workspace_id
    assert event.payload == {
        "name": "Install deps",
        "phase": "execution",
        "type": "command",
        "attempt": 1,
    }
    assert (await clocked.store.get_job(job.id)).last_event_seq == 4
    assert await clocked.steps.get_step(job.id, step.id) == step


async def test_steps_get_ordinals_1_2_3_and_are_listed_in_order(clocked: Engine, job: Job) -> None:
    names = ["setup", "run", "cleanup"]
    for name in names:
        await _add(clocked, job, name)
    steps = await clocked.steps.list_steps(job.id)
    assert [(s.ordinal, s.name) for s in steps] == [(1, "setup"), (2, "run"), (3, "cleanup")]
    assert [e.seq for e in await _events(clocked, job, after=3)] == [4, 5, 6]


async def test_pending_step_writes_no_event_until_started(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job, "later", start=False)
    assert (step.status, step.started_at) == (StepStatus.PENDING, None)
    assert await _events(clocked, job, after=3) == []

    clock.advance(timedelta(seconds=1))
    started = await clocked.steps.start_step(step.id, W1)
    assert (started.status, started.started_at) == (StepStatus.RUNNING, clock.now())
    (event,) = await _events(clocked, job, after=3)
    assert (event.seq, event.type, event.step_id) == (4, "step.started", step.id)
    assert event.payload["name"] == "later"


# -- finishing steps ---------------------------------------------------------------------------


async def test_completed_step_writes_step_completed_with_its_duration(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job)
    clock.advance(timedelta(seconds=2, milliseconds=500))
    done = await clocked.steps.finish_step(step.id, W1, StepStatus.COMPLETED)

    assert (done.status, done.completed_at, done.duration_s, done.error) == (
        StepStatus.COMPLETED,
        clock.now(),
        2.5,
        None,
    )
    event = (await _events(clocked, job))[-1]
    assert (event.seq, event.type, event.step_id) == (5, "step.completed", step.id)
    assert event.payload == {
        "step_id": str(step.id),
        "ordinal": 1,
        "name": "build",
        "duration_s": 2.5,
    }


async def test_failed_step_writes_step_failed_with_the_error(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job)
    clock.advance(timedelta(seconds=1))
    failed = await clocked.steps.finish_step(step.id, W1, StepStatus.FAILED, error="exit 2")

    assert (failed.status, failed.error, failed.duration_s) == (StepStatus.FAILED, "exit 2", 1.0)
    event = (await _events(clocked, job))[-1]
    assert event.type == "step.failed"
    assert (event.payload["error"], event.payload["duration_s"]) == ("exit 2", 1.0)


async def test_skipped_step_writes_step_skipped_with_the_reason(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job)
    clock.advance(timedelta(seconds=3))
    skipped = await clocked.steps.finish_step(
        step.id, W1, StepStatus.SKIPPED, reason="nothing to lint"
    )
    assert (skipped.status, skipped.duration_s) == (StepStatus.SKIPPED, 3.0)
    event = (await _events(clocked, job))[-1]
    assert event.type == "step.skipped"
    assert (event.payload["reason"], event.payload["duration_s"]) == ("nothing to lint", 3.0)
    assert "error" not in event.payload


async def test_pending_step_skipped_before_it_started_has_no_duration(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job, start=False)
    skipped = await clocked.steps.finish_step(step.id, W1, StepStatus.SKIPPED, reason="not needed")
    assert (skipped.status, skipped.started_at, skipped.duration_s) == (
        StepStatus.SKIPPED,
        None,
        None,
    )
    (event,) = await _events(clocked, job, after=3)
    assert (event.type, event.payload["duration_s"]) == ("step.skipped", None)


async def test_illegal_step_transitions_raise_and_write_nothing(clocked: Engine, job: Job) -> None:
    running = await _add(clocked, job, "running")
    completed = await clocked.steps.finish_step(
        (await _add(clocked, job, "completed")).id, W1, StepStatus.COMPLETED
    )
    pending = await _add(clocked, job, "pending", start=False)
    before = await _snapshot(clocked, job)
    sub = clocked.bus.subscribe(EventFilter(job_id=job.id))

    steps = clocked.steps
    illegal: list[tuple[Step, str, Callable[[], Awaitable[object]]]] = [
        (running, "running", lambda: steps.start_step(running.id, W1)),
        (pending, "completed", lambda: steps.finish_step(pending.id, W1, StepStatus.COMPLETED)),
        (pending, "failed", lambda: steps.finish_step(pending.id, W1, StepStatus.FAILED)),
        (completed, "failed", lambda: steps.finish_step(completed.id, W1, StepStatus.FAILED)),
        (completed, "skipped", lambda: steps.finish_step(completed.id, W1, StepStatus.SKIPPED)),
        (completed, "running", lambda: steps.start_step(completed.id, W1)),
        (completed, "running", lambda: steps.append_output(completed.id, W1, "late")),
    ]
    for step, to, attempt in illegal:
        with pytest.raises(InvalidTransition) as info:
            await attempt()
        moved = (info.value.entity_id, info.value.from_, info.value.to)
        assert moved == (step.id, step.status.value, to)
        assert await _snapshot(clocked, job) == before, f"{step.name} -> {to} wrote something"
    assert await _received(sub) == []


async def test_finish_step_refuses_a_non_terminal_status(clocked: Engine, job: Job) -> None:
    step = await _add(clocked, job)
    before = await _snapshot(clocked, job)
    with pytest.raises(ValueError, match="terminal status"):
        await clocked.steps.finish_step(step.id, W1, StepStatus.RUNNING)
    assert await _snapshot(clocked, job) == before


# -- output ------------------------------------------------------------------------------------


async def test_append_output_writes_step_output_and_keeps_the_tail(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job)
    await clocked.steps.append_output(step.id, W1, "hello\n")
    await clocked.steps.append_output(step.id, W1, "world\n", dropped_chars=7)

    outputs = (await _events(clocked, job))[-2:]
    assert [(e.seq, e.type, e.step_id) for e in outputs] == [
        (5, "step.output", step.id),
        (6, "step.output", step.id),
    ]
    assert outputs[0].payload == {"step_id": str(step.id), "ordinal": 1, "chunk": "hello\n"}
    assert outputs[1].payload == {
        "step_id": str(step.id),
        "ordinal": 1,
        "chunk": "world\n",
        "dropped_chars": 7,
    }
    assert (await clocked.steps.get_step(job.id, step.id)).output_tail == "hello\nworld\n"


async def test_output_tail_is_bounded_to_the_last_8000_chars(clocked: Engine, job: Job) -> None:
    assert OUTPUT_TAIL_CHARS == 8_000
    step = await _add(clocked, job)
    chunks = [c * 5_000 for c in "abc"]
    for chunk in chunks:
        await clocked.steps.append_output(step.id, W1, chunk)
    tail = (await clocked.steps.get_step(job.id, step.id)).output_tail
    assert tail == "".join(chunks)[-8_000:]

    await clocked.steps.append_output(step.id, W1, "0123456789" * 2_000)  # one chunk > limit
    tail = (await clocked.steps.get_step(job.id, step.id)).output_tail
    assert tail == ("0123456789" * 2_000)[-8_000:]
    # The events keep every chunk whole; only the step's tail is bounded.
    assert [len(e.payload["chunk"]) for e in await _events(clocked, job, after=4)] == [
        5_000,
        5_000,
        5_000,
        20_000,
    ]


async def test_append_outputs_writes_one_event_per_chunk_with_consecutive_seqs(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job)
    chunks = [f"line {i}\n" for i in range(1, 51)]
    await clocked.steps.append_outputs(step.id, W1, chunks, dropped_chars=3)

    outputs = await _events(clocked, job, after=4)
    assert [e.seq for e in outputs] == list(range(5, 55))
    assert [e.payload["chunk"] for e in outputs] == chunks
    assert {e.type for e in outputs} == {"step.output"}
    # ids are global and monotonic in the same order as the seqs
    assert [e.id for e in outputs] == sorted(e.id for e in outputs)
    assert [e.payload.get("dropped_chars") for e in outputs] == [3] + [None] * 49
    assert (await clocked.store.get_job(job.id)).last_event_seq == 54
    assert (await clocked.steps.get_step(job.id, step.id)).output_tail == "".join(chunks)


async def test_append_outputs_with_no_chunks_writes_nothing(clocked: Engine, job: Job) -> None:
    step = await _add(clocked, job)
    before = await _snapshot(clocked, job)
    await clocked.steps.append_outputs(step.id, W1, [])
    assert await _snapshot(clocked, job) == before


# -- tokens and other step events --------------------------------------------------------------


async def test_record_tokens_accumulates_and_writes_ai_tokens_used(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job, "agent", type_=StepType.AI_ACTION)
    first = await clocked.steps.record_tokens(step.id, W1, 100, 20)
    second = await clocked.steps.record_tokens(step.id, W1, 5, 1)
    assert (first.tokens_input, first.tokens_output) == (100, 20)
    assert (second.tokens_input, second.tokens_output) == (105, 21)

    events = await _events(clocked, job, after=4)
    assert [(e.seq, e.type, e.step_id) for e in events] == [
        (5, "ai.tokens_used", step.id),
        (6, "ai.tokens_used", step.id),
    ]
    assert events[1].payload == {
        "step_id": str(step.id),
        "ordinal": 1,
        "tokens_input": 5,
        "tokens_output": 1,
        "total_input": 105,
        "total_output": 21,
    }
    # The totals travel with the step's end, too.
    await clocked.steps.finish_step(step.id, W1, StepStatus.COMPLETED)
    done = (await _events(clocked, job))[-1]
    assert (done.payload["tokens_input"], done.payload["tokens_output"]) == (105, 21)


async def test_record_tokens_on_a_non_ai_step_is_refused_and_writes_nothing(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job, "compile", type_=StepType.COMMAND)
    before = await _snapshot(clocked, job)
    with pytest.raises(Conflict, match="ai_action"):
        await clocked.steps.record_tokens(step.id, W1, 1, 1)
    assert await _snapshot(clocked, job) == before


async def test_negative_token_counts_are_refused(clocked: Engine, job: Job) -> None:
    step = await _add(clocked, job, "agent", type_=StepType.AI_ACTION)
    with pytest.raises(ValueError, match="negative"):
        await clocked.steps.record_tokens(step.id, W1, -1, 0)


async def test_record_step_event_writes_the_event_with_the_step(clocked: Engine, job: Job) -> None:
    step = await _add(clocked, job, "agent", type_=StepType.AI_ACTION)
    await clocked.steps.record_step_event(
        step.id, W1, EventType.AI_TOOL_CALLED, {"tool": "grep", "args": ["-r", "TODO"]}
    )
    event = (await _events(clocked, job))[-1]
    assert (event.seq, event.type, event.step_id) == (5, "ai.tool_called", step.id)
    assert event.payload == {
        "step_id": str(step.id),
        "ordinal": 1,
        "tool": "grep",
        "args": ["-r", "TODO"],
    }


# -- only the lease holder writes --------------------------------------------------------------


Write = Callable[[Engine, Job, dict[str, Step], str], Awaitable[object]]

WRITES: dict[str, Write] = {
    "add_step": lambda e, j, s, w: _add(e, j, "intruder", worker=w),
    "start_step": lambda e, j, s, w: e.steps.start_step(s["pending"].id, w),
    "finish_step": lambda e, j, s, w: e.steps.finish_step(s["running"].id, w, StepStatus.COMPLETED),
    "append_output": lambda e, j, s, w: e.steps.append_output(s["running"].id, w, "x"),
    "append_outputs": lambda e, j, s, w: e.steps.append_outputs(s["running"].id, w, ["x", "y"]),
    "record_tokens": lambda e, j, s, w: e.steps.record_tokens(s["ai"].id, w, 1, 1),
    "record_step_event": lambda e, j, s, w: e.steps.record_step_event(
        s["running"].id, w, EventType.STEP_PROGRESS, {"percent": 5}
    ),
}


async def _three_steps(engine: Engine, job: Job) -> dict[str, Step]:
    return {
        "running": await _add(engine, job, "running"),
        "pending": await _add(engine, job, "pending", start=False),
        "ai": await _add(engine, job, "ai", type_=StepType.AI_ACTION),
    }


async def test_worker_without_the_lease_gets_job_lost_and_nothing_is_written(
    clocked: Engine, job: Job
) -> None:
    steps = await _three_steps(clocked, job)
    before = await _snapshot(clocked, job)
    sub = clocked.bus.subscribe(EventFilter(job_id=job.id))

    for name, write in WRITES.items():
        with pytest.raises(JobLost) as info:
            await write(clocked, job, steps, W2)
        assert info.value.fields == {"job_id": str(job.id)}, name
        assert await _snapshot(clocked, job) == before, f"{name} wrote something"
    assert await _received(sub) == []  # a rolled-back transaction publishes nothing


async def test_worker_whose_job_was_cancelled_gets_job_lost_and_nothing_is_written(
    clocked: Engine, clocked_ws: uuid.UUID, job: Job
) -> None:
    steps = await _three_steps(clocked, job)
    await clocked.jobs.cancel(clocked_ws, job.id, actor="user")
    before = await _snapshot(clocked, job)
    assert before[0].status is JobStatus.CANCELLED
    sub = clocked.bus.subscribe(EventFilter(job_id=job.id))

    for name, write in WRITES.items():
        with pytest.raises(JobLost):
            await write(clocked, job, steps, W1)
        assert await _snapshot(clocked, job) == before, f"{name} wrote something"
    assert await _received(sub) == []


async def test_worker_whose_expired_lease_was_taken_over_gets_job_lost(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    first = await _add(clocked, job, "first attempt")
    clock.advance(LEASE + timedelta(seconds=1))
    swept = await clocked.store.expire_leases(actor="sweeper")
    assert [j.id for j in swept.requeued] == [job.id]
    (retaken,) = await clocked.queue.reserve(W2, 1, LEASE)
    assert (retaken.id, retaken.attempt) == (job.id, 2)

    with pytest.raises(JobLost):
        await clocked.steps.append_output(first.id, W1, "from the old worker")
    with pytest.raises(JobLost):
        await _add(clocked, job, "old worker's next step")
    second = await _add(clocked, job, "second attempt", worker=W2)
    assert (second.ordinal, second.attempt) == (2, 2)
    events = await _events(clocked, job)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    step_events = [(e.type, e.actor) for e in events if e.type.startswith("step.")]
    assert step_events == [
        ("step.started", W1),
        ("step.failed", "sweeper"),  # the sweeper closed the lost attempt's step
        ("step.started", W2),
    ]


async def test_worker_whose_job_completed_can_no_longer_add_steps(
    clocked: Engine, job: Job
) -> None:
    assert await clocked.store.complete_job(job.id, W1, None) is not None
    before = await _snapshot(clocked, job)
    with pytest.raises(JobLost):
        await _add(clocked, job)
    assert await _snapshot(clocked, job) == before


# -- one gapless event log, published once after commit ----------------------------------------


async def test_job_and_step_events_share_one_gapless_seq(
    clocked: Engine, job: Job, bus_events: MemorySubscription
) -> None:
    setup = await _add(clocked, job, "setup")
    await clocked.steps.append_output(setup.id, W1, "ok\n")
    await clocked.steps.finish_step(setup.id, W1, StepStatus.COMPLETED)
    assert await clocked.store.report_progress(job.id, W1, 50)
    agent = await _add(clocked, job, "agent", type_=StepType.AI_ACTION)
    await clocked.steps.record_tokens(agent.id, W1, 10, 2)
    await clocked.steps.append_outputs(agent.id, W1, ["a", "b", "c"])
    await clocked.steps.finish_step(agent.id, W1, StepStatus.FAILED, error="boom")
    assert await clocked.store.complete_job(job.id, W1, None) is not None

    events = await _events(clocked, job)
    assert [e.type for e in events] == [
        "job.created",
        "job.queued",
        "job.started",
        "step.started",
        "step.output",
        "step.completed",
        "job.progress",
        "step.started",
        "ai.tokens_used",
        "step.output",
        "step.output",
        "step.output",
        "step.failed",
        "job.completed",
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (await clocked.store.get_job(job.id)).last_event_seq == len(events)
    # The bus saw every committed event after the subscription, once each, in order.
    assert _keys(await _received(bus_events)) == _keys(events[3:])


def _keys(events: Sequence[Event]) -> list[tuple[int, int, str]]:
    return [(e.id, e.seq, e.type) for e in events]


async def test_bus_receives_each_event_exactly_once_after_its_transaction_commits(
    clocked: Engine, job: Job, bus_events: MemorySubscription
) -> None:
    """A proxy bus checks, at publish time, that a separate connection already sees each
    published event: publishing happens after commit, never before."""
    writer = clocked.steps.writer
    real_bus = clocked.bus
    assert writer.bus is real_bus
    published: list[Event] = []
    invisible: list[int] = []

    class CommitCheckingBus:
        async def publish(self, events: Sequence[Event]) -> None:
            stored = {e.id for e in await clocked.store.list_events(job.id)}
            invisible.extend(e.id for e in events if e.id not in stored)
            published.extend(events)
            await real_bus.publish(events)

    writer.bus = CommitCheckingBus()  # type: ignore[assignment]
    try:
        step = await _add(clocked, job)
        await clocked.steps.append_outputs(step.id, W1, ["1", "2"])
        await clocked.steps.append_output(step.id, W1, "3")
        await clocked.steps.finish_step(step.id, W1, StepStatus.COMPLETED)
    finally:
        writer.bus = real_bus

    assert invisible == []
    stored = await _events(clocked, job, after=3)
    assert _keys(published) == _keys(stored)
    received = await _received(bus_events)
    assert _keys(received) == _keys(stored)
    assert len({e.id for e in received}) == len(received) == 5


async def test_rolled_back_transaction_publishes_nothing(
    clocked: Engine, job: Job, bus_events: MemorySubscription
) -> None:
    step = await _add(clocked, job)
    assert len(await _received(bus_events)) == 1
    with pytest.raises(JobLost):
        await clocked.steps.append_outputs(step.id, W2, ["a", "b"])
    with pytest.raises(InvalidTransition):
        await clocked.steps.start_step(step.id, W1)
    assert await _received(bus_events) == []
    assert bus_events.closed_reason is None


# -- steps left open when a job leaves `running` without its worker ------------------------------


async def test_cancelling_a_running_job_fails_its_open_steps_before_the_cancel_event(
    clocked: Engine, clocked_ws: uuid.UUID, job: Job
) -> None:
    done = await _add(clocked, job, "checkout")
    await clocked.steps.finish_step(done.id, W1, StepStatus.COMPLETED)
    running = await _add(clocked, job, "tests")

    await clocked.jobs.cancel(clocked_ws, job.id, actor="user")

    steps = {s.id: s for s in await clocked.steps.list_steps(job.id)}
    assert steps[done.id].status is StepStatus.COMPLETED
    assert (steps[running.id].status, steps[running.id].error) == (
        StepStatus.FAILED,
        "job cancelled",
    )
    assert steps[running.id].completed_at is not None
    events = await _events(clocked, job)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.type, e.step_id) for e in events[-2:]] == [
        ("step.failed", running.id),
        ("job.cancelled", None),
    ]
    assert events[-2].payload["error"] == "job cancelled"


async def test_an_expired_lease_fails_the_open_step_and_the_next_attempt_starts_clean(
    clocked: Engine, clock: FakeClock, job: Job
) -> None:
    step = await _add(clocked, job, "long build")
    clock.advance(LEASE + timedelta(seconds=1))

    await clocked.store.expire_leases(actor="sweeper")

    closed = await clocked.steps.get_step(job.id, step.id)
    assert closed.status is StepStatus.FAILED
    assert "lease expired" in (closed.error or "")
    events = await _events(clocked, job)
    assert [e.type for e in events[-2:]] == ["step.failed", "job.requeued"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_graceful_release_fails_the_open_step_with_the_reason(
    clocked: Engine, job: Job
) -> None:
    step = await _add(clocked, job, "deploy")

    await clocked.store.release_jobs(W1, [job.id])

    closed = await clocked.steps.get_step(job.id, step.id)
    assert (closed.status, closed.error) == (
        StepStatus.FAILED,
        "the worker released the job (shutdown)",
    )


async def test_the_old_worker_finishing_a_step_of_a_cancelled_job_gets_job_lost(
    clocked: Engine, clocked_ws: uuid.UUID, job: Job
) -> None:
    step = await _add(clocked, job, "tests")
    await clocked.jobs.cancel(clocked_ws, job.id, actor="user")

    # not InvalidTransition (the cancel already closed the step): the worker learns it lost
    # the job, which is what it must act on
    with pytest.raises(JobLost):
        await clocked.steps.finish_step(step.id, W1, StepStatus.COMPLETED)


async def test_output_and_events_on_a_step_that_is_not_running_are_refused(
    clocked: Engine, job: Job
) -> None:
    pending = await _add(clocked, job, "later", start=False)
    ended = await _add(clocked, job, "done")
    await clocked.steps.finish_step(ended.id, W1, StepStatus.COMPLETED)
    before = await _snapshot(clocked, job)

    for step in (pending, ended):
        with pytest.raises(InvalidTransition, match="running steps only"):
            await clocked.steps.append_output(step.id, W1, "text")
        with pytest.raises(InvalidTransition, match="running steps only"):
            await clocked.steps.record_step_event(
                step.id, W1, EventType.AI_TOOL_CALLED, {"tool": "grep"}
            )
    assert await _snapshot(clocked, job) == before
