"""The herald against a real engine (SQLite): real jobs run by a real worker produce the events,
a recording chat provider stands in for the platform.

Time for the rate limits comes from a ``FakeClock``: a test freezes the window, looks at what
was sent, then advances the clock; it never sleeps for a rate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stitchwork.chat.base import CommandCallback, MessageRef
from stitchwork.clock import FakeClock
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.domain.locks import LockMode
from stitchwork.domain.repo_config import GateConfig, RepoConfig
from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.errors import ConfigError
from stitchwork.runner.gates import run_gates
from stitchwork.runtime.context import JobContext, JobFailed
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.herald import ChatRate, Herald
from tests.conftest import Backend
from tests.contract.helpers import default_workspace, running_worker, wait_for_status, wait_until

GENEROUS = ChatRate(messages=10_000, per_s=1.0)
CHAT = {"provider": "console", "channel": "C-dev", "thread": "T-42"}
SHOUTING = re.compile(r"\b[A-Z]{4,}\b")
CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]


@dataclass
class Call:
    op: str  # send | thread | edit
    dest: str  # channel:<id> | thread:<id>
    text: str
    at: float  # fake time when the herald made the call
    message_id: str


class RecordingProvider:
    """A chat platform that records every call (a test double of the ``ChatProvider`` port).
    ``gate``, when set, holds every call until it opens; ``failures`` calls raise first."""

    name = "console"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []
        self.entered = 0
        self.gate: asyncio.Event | None = None
        self.failures = 0
        self.connected = True
        self.messages: dict[str, str] = {}  # message id -> text as shown now
        self.callback: CommandCallback | None = None

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False

    def is_connected(self) -> bool:
        return self.connected

    async def _call(self, op: str, dest: str, text: str, ref: MessageRef | None) -> MessageRef:
        at = self.clock.now().timestamp()
        self.entered += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("chat platform unavailable")
        if ref is None:
            kind, _, where = dest.partition(":")
            channel, thread = ("C-parent", where) if kind == "thread" else (where, None)
            ref = MessageRef(channel, f"m{len(self.messages) + 1}", thread)
        self.messages[ref.message_id] = text
        self.calls.append(Call(op, dest, text, at, ref.message_id))
        return ref

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        return await self._call("send", f"channel:{channel_id}", text, None)

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        raise AssertionError("the herald posts to threads the bridge created")

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        return await self._call("thread", f"thread:{thread_id}", text, None)

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        dest = f"thread:{ref.thread_id}" if ref.thread_id else f"channel:{ref.channel_id}"
        await self._call("edit", dest, text, ref)

    def on_command(self, callback: CommandCallback) -> None:
        self.callback = callback

    # -- what a test looks at -------------------------------------------------------------

    def to(self, dest: str) -> list[Call]:
        return [c for c in self.calls if c.dest == dest]

    def shown(self, dest: str) -> str:
        """Every message at ``dest`` as it reads now (edits applied), in order."""
        ids = dict.fromkeys(c.message_id for c in self.to(dest))
        return "\n".join(self.messages[i] for i in ids)


@pytest.fixture
def provider(clock: FakeClock) -> RecordingProvider:
    return RecordingProvider(clock)


@pytest.fixture
async def engine(sqlite_backend: Backend) -> AsyncIterator[Engine]:
    eng = await sqlite_backend.open_engine()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def ws(engine: Engine) -> uuid.UUID:
    return await default_workspace(engine)


@asynccontextmanager
async def running_herald(
    engine: Engine,
    provider: RecordingProvider,
    clock: FakeClock,
    *,
    rate: ChatRate = GENEROUS,
    routes: dict[str, str] | None = None,
    default_channel: str | None = "C-default",
    queue_size: int = 1000,
) -> AsyncIterator[Herald]:
    herald = Herald(
        engine.bus,
        engine.store,
        provider,
        routes=routes or {},
        default_channel=default_channel,
        rate=rate,
        clock=clock,
        queue_size=queue_size,
    )
    task = asyncio.create_task(herald.run(), name="herald")
    try:
        await asyncio.wait_for(herald.ready.wait(), 10)
        yield herald
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def submit(
    engine: Engine,
    ws: uuid.UUID,
    *,
    chat: dict[str, str] | None = CHAT,
    type_: str = "noop",
    payload: dict[str, Any] | None = None,
    issue_ref: str | None = "acme/app#42",
) -> Job:
    new = NewJob(
        type_,
        payload or {},
        issue_ref=issue_ref,
        max_attempts=1,
        metadata=None if chat is None else {"chat": chat},
    )
    return (await engine.jobs.submit(ws, new, actor="test")).job


async def run_job(engine: Engine, job: Job, handler: Handler, *, status: JobStatus) -> Job:
    async with running_worker(engine, handlers={job.type: handler}):
        return await wait_for_status(engine, job.id, status, timeout=60)


async def said(provider: RecordingProvider, dest: str, *fragments: str) -> None:
    async def probe() -> bool:
        return all(f in provider.shown(dest) for f in fragments)

    await wait_until(probe, what=f"{fragments} at {dest}", timeout=20)


def gates(tmp_path: Path, script: str) -> RepoConfig:
    return RepoConfig(gates={"tests": GateConfig("tests", ("sh", "-c", script))})


def in_order(text: str, *fragments: str) -> None:
    positions = [text.find(f) for f in fragments]
    assert -1 not in positions, (fragments, text)
    assert positions == sorted(positions), text


def assert_calm(provider: RecordingProvider) -> None:
    for call in provider.calls:
        outside_code = CODE_BLOCK.sub("", call.text)
        assert not SHOUTING.findall(outside_code), call.text


# -- wording, indicators and routing -----------------------------------------------------------


async def test_a_chat_job_posts_milestones_to_its_channel_and_steps_and_gates_to_its_thread(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock, tmp_path: Path
) -> None:
    async def build_and_check(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("build", phase=StepPhase.EXECUTION, type_=StepType.COMMAND) as step:
            await step.output_now(["compiling\n"])
        config = gates(tmp_path, "echo 12 passed")
        results = await run_gates(
            ctx, ["tests"], config=config, worktree=tmp_path, changes=[], claims=[],
            mode=LockMode.WRITE, attempt=1,
        )  # fmt: skip
        assert results[0].passed
        return None

    async with running_herald(engine, provider, clock):
        job = await submit(engine, ws)
        await run_job(engine, job, build_and_check, status=JobStatus.COMPLETED)
        label = f"Job {job.id} for acme/app#42"
        await said(provider, "channel:C-dev", f"✅ {label} completed in ")
        await said(provider, "thread:T-42", f"✅ {label} completed in ")

    channel, thread = provider.shown("channel:C-dev"), provider.shown("thread:T-42")
    in_order(
        channel,
        f"🟢 {label} (noop) is queued.",
        f"🔵 {label} started.",
        f"✅ {label} completed in ",
    )
    assert "Step" not in channel
    assert "Gate" not in channel
    in_order(
        thread,
        f"🟢 {label} (noop) is queued.",
        f"🔵 {label} started.",
        "🔵 Step build started.",
        "✅ Step build finished in ",
        "🔵 Gate tests is running (attempt 1).",
        "✅ Gate tests passed: exited with code 0.",
        f"✅ {label} completed in ",
    )
    assert "Step gate tests" not in thread  # a gate is told by its own events, once
    assert "compiling" not in thread  # output only when verbose
    assert {c.dest for c in provider.calls} == {"channel:C-dev", "thread:T-42"}
    assert all(c.op != "edit" for c in provider.calls)  # within the rate: nothing folded
    assert_calm(provider)


async def test_a_failing_gate_needs_attention_with_its_name_and_an_excerpt(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock, tmp_path: Path
) -> None:
    script = "echo collecting 3 items; echo 'test_login: expected 200, got 500'; exit 1"

    async def check(ctx: JobContext) -> dict[str, Any] | None:
        config = gates(tmp_path, script)
        [result] = await run_gates(
            ctx, ["tests"], config=config, worktree=tmp_path, changes=[], claims=[],
            mode=LockMode.WRITE, attempt=1,
        )  # fmt: skip
        assert not result.passed
        raise JobFailed("the gate tests did not pass", retryable=False)

    async with running_herald(engine, provider, clock):
        job = await submit(engine, ws)
        await run_job(engine, job, check, status=JobStatus.FAILED)
        label = f"Job {job.id} for acme/app#42"
        await said(provider, "channel:C-dev", f"⚠️ {label} needs attention")
        await said(provider, "thread:T-42", f"⚠️ {label} needs attention")

    attention = next(c.text for c in provider.to("channel:C-dev") if "⚠️" in c.text)
    assert attention == (
        f"⚠️ {label} needs attention: the gate tests did not pass\n"
        "What did not pass: the gate tests: exited with code 1\n"
        "```\ncollecting 3 items\ntest_login: expected 200, got 500\n```"
    )
    in_order(
        provider.shown("thread:T-42"),
        "🔵 Gate tests is running (attempt 1).",
        "⚠️ Gate tests did not pass: exited with code 1.\n```\ncollecting 3 items\n",
        f"⚠️ {label} needs attention",
    )
    assert_calm(provider)


async def test_a_cancelled_job_is_paused_with_its_reason(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    started = asyncio.Event()

    async def wait(ctx: JobContext) -> dict[str, Any] | None:
        started.set()
        await ctx.sleep(30)
        return None

    async with running_herald(engine, provider, clock):
        job = await submit(engine, ws)
        async with running_worker(engine, handlers={"noop": wait}):
            await asyncio.wait_for(started.wait(), 20)
            await engine.jobs.cancel(ws, job.id, actor="test", reason="not needed any more")
            await wait_for_status(engine, job.id, JobStatus.CANCELLED)
        label = f"Job {job.id} for acme/app#42"
        final = f"⏸️ {label} was cancelled (not needed any more)."
        await said(provider, "channel:C-dev", final)
        await said(provider, "thread:T-42", final)
    assert_calm(provider)


async def test_jobs_not_from_chat_post_milestones_to_their_routed_channel_only(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    async def step(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("work"):
            await ctx.output("done\n")
        return None

    routes = {"noop": "C-ops"}
    async with running_herald(engine, provider, clock, routes=routes, default_channel="C-all"):
        routed = await submit(engine, ws, chat=None, issue_ref=None)
        other_platform = await submit(engine, ws, chat={**CHAT, "provider": "discord"})
        unrouted = await submit(
            engine, ws, chat=None, type_="sleep", payload={"seconds": 0}, issue_ref=None
        )
        async with running_worker(engine, handlers={"noop": step, "sleep": step}):
            for job in (routed, other_platform, unrouted):
                await wait_for_status(engine, job.id, JobStatus.COMPLETED)
        await said(provider, "channel:C-ops", f"✅ Job {routed.id} completed")
        await said(provider, "channel:C-ops", f"✅ Job {other_platform.id} for acme")
        await said(provider, "channel:C-all", f"✅ Job {unrouted.id} completed")

    assert {c.dest for c in provider.calls} == {"channel:C-ops", "channel:C-all"}
    [created] = await engine.store.list_events(other_platform.id, types=["job.created"])
    assert created.payload["metadata"] == {"chat": {**CHAT, "provider": "discord"}}
    [created] = await engine.store.list_events(routed.id, types=["job.created"])
    assert "metadata" not in created.payload
    assert str(unrouted.id) not in provider.shown("channel:C-ops")
    assert "🟢" in provider.shown("channel:C-all")
    assert "(sleep)" in provider.shown("channel:C-all")
    assert "Step" not in provider.shown("channel:C-ops") + provider.shown("channel:C-all")


async def test_verbose_posts_live_output_to_the_thread_and_quiet_stops_it(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    async def talk(ctx: JobContext) -> dict[str, Any] | None:
        async with ctx.step("talk") as step:
            await step.output_now([f"{ctx.job.payload['word']} one\n", "and two\n"])
        return None

    async with running_herald(engine, provider, clock) as herald:
        loud = await submit(engine, ws, payload={"word": "loud"}, chat={**CHAT, "thread": "T-1"})
        silent = await submit(
            engine, ws, payload={"word": "silent"}, chat={**CHAT, "thread": "T-2"}
        )
        hushed = await submit(
            engine, ws, payload={"word": "hushed"}, chat={**CHAT, "thread": "T-3"}
        )
        herald.verbose(loud.id, True)
        herald.verbose(hushed.id, True)
        herald.quiet(hushed.id)
        async with running_worker(engine, handlers={"noop": talk}):
            for job in (loud, silent, hushed):
                await wait_for_status(engine, job.id, JobStatus.COMPLETED)
        for thread in ("T-1", "T-2", "T-3"):
            await said(provider, f"thread:{thread}", "✅ Job")

    assert "Live output:\n```\nloud one\nand two\n```" in provider.shown("thread:T-1")
    in_order(provider.shown("thread:T-1"), "🔵 Step talk started.", "loud one", "✅ Step talk")
    assert "silent one" not in provider.shown("thread:T-2")
    assert "hushed one" not in provider.shown("thread:T-3")
    assert "loud" not in provider.shown("channel:C-dev")  # output never goes to the channel


# -- rate limits: the burst ---------------------------------------------------------------------

STEPS = 83  # x (started + 10 outputs + completed) + created, queued, started, completed = 1,000


async def burst(ctx: JobContext) -> dict[str, Any] | None:
    for i in range(STEPS):
        async with ctx.step(f"step {i}") as step:
            await step.output_now([f"step {i} line {n}\n" for n in range(10)])
    return None


def assert_within_rate(provider: RecordingProvider, rate: ChatRate) -> None:
    """No window of ``rate.per_s`` (fake time) holds more than ``rate.messages`` calls to one
    destination."""
    for dest in {c.dest for c in provider.calls}:
        times = [c.at for c in provider.to(dest)]
        for i, start in enumerate(times):
            assert sum(start <= t < start + rate.per_s for t in times[i:]) <= rate.messages


async def test_a_burst_of_1000_events_for_one_job_stays_within_the_rate_and_ends_on_its_final_state(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    rate = ChatRate(messages=5, per_s=5.0)
    async with running_herald(engine, provider, clock, rate=rate) as herald:
        job = await submit(engine, ws)
        herald.verbose(job.id, True)  # the output counts too
        done = await run_job(engine, job, burst, status=JobStatus.COMPLETED)
        assert done.last_event_seq == 1000

        async def blocked_at_the_end() -> bool:
            # every event taken in, the window's budget spent, the rest waiting
            return (
                herald.last_seq(job.id) == 1000
                and len(provider.to("thread:T-42")) >= rate.messages
                and herald.pending > 0
            )

        await wait_until(blocked_at_the_end, what="the herald to use up the window", timeout=30)
        # The clock has not moved: one window, though the thread had far more to say.
        assert len(provider.to("thread:T-42")) == rate.messages
        assert len(provider.to("channel:C-dev")) <= rate.messages
        assert "completed" not in provider.shown("thread:T-42")  # the end waits for budget

        clock.advance(timedelta(seconds=rate.per_s))

        async def delivered() -> bool:
            return herald.pending == 0 and "completed" in provider.to("thread:T-42")[-1].text

        await wait_until(delivered, what="the final state after the window", timeout=20)
        label = f"Job {job.id} for acme/app#42"
        await said(provider, "channel:C-dev", f"✅ {label} completed in ")

    thread = provider.to("thread:T-42")
    assert len(thread) <= 2 * rate.messages  # two windows
    assert_within_rate(provider, rate)
    last = thread[-1]
    assert last.op == "edit"
    assert last.text.startswith(f"✅ {label} completed in ")
    assert re.search(r"\(\d+ earlier updates folded into this one\)$", last.text)
    assert provider.messages[last.message_id] == last.text  # the status message shows it
    assert provider.to("channel:C-dev")[-1].text.startswith(f"✅ {label} completed in ")
    assert herald.dropped > 100
    assert_calm(provider)


async def test_the_herald_never_blocks_the_job_or_the_publisher_while_chat_is_stuck(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    provider.gate = asyncio.Event()  # every chat call hangs until the test opens it
    async with running_herald(engine, provider, clock, queue_size=50) as herald:
        job = await submit(engine, ws)
        herald.verbose(job.id, True)
        await run_job(engine, job, burst, status=JobStatus.COMPLETED)  # not held up by chat
        assert provider.calls == []
        assert provider.entered == 1
        assert herald.pending <= 50  # bounded while chat is stuck

        # Publishing straight to the bus: a fresh herald with its own stuck chat.
        events = await engine.store.list_events(job.id)
        stuck = RecordingProvider(clock)
        stuck.gate = asyncio.Event()
        async with running_herald(engine, stuck, clock, queue_size=2000) as second:
            started = time.perf_counter()
            for i in range(0, len(events), 100):
                await engine.bus.publish(events[i : i + 100])
            assert time.perf_counter() - started < 1.0

            async def took_all_in() -> bool:
                return second.last_seq(job.id) == 1000

            await wait_until(took_all_in, what="the second herald to read every event")
            assert stuck.calls == []

        provider.gate.set()
        label = f"Job {job.id} for acme/app#42"
        await said(provider, "thread:T-42", f"✅ {label} completed in ")
        await said(provider, "channel:C-dev", f"✅ {label} completed in ")
    assert herald.dropped > 0


async def test_a_dropped_subscription_is_replaced_and_the_gap_read_from_the_database(
    sqlite_backend: Backend, engine: Engine, ws: uuid.UUID, provider: RecordingProvider,
    clock: FakeClock,
) -> None:  # fmt: skip
    async with running_herald(engine, provider, clock, queue_size=100) as herald:
        # Another process (an engine with a bus of its own) runs the job; its events then
        # reach this bus all at once, more than the herald's subscription may hold.
        other = await sqlite_backend.open_engine()
        try:
            job = await submit(other, ws)
            await run_job(other, job, burst, status=JobStatus.COMPLETED)
        finally:
            await other.close()
        events = await engine.store.list_events(job.id)
        await engine.bus.publish(events)

        label = f"Job {job.id} for acme/app#42"
        await said(provider, "thread:T-42", f"✅ {label} completed in ")
        await said(provider, "channel:C-dev", f"🟢 {label} (noop) is queued.")
        assert herald.resubscribes == 1
        assert herald.recovered == len(events) == 1000

        # and it goes on with live events on the new subscription
        after = await submit(engine, ws, chat={**CHAT, "thread": "T-after"})
        await run_job(engine, after, burst, status=JobStatus.COMPLETED)
        await said(provider, "thread:T-after", f"✅ Job {after.id} for acme/app#42")
        assert herald.resubscribes == 1


async def test_a_send_the_platform_refuses_is_tried_again_and_a_disconnected_provider_waits(
    engine: Engine, ws: uuid.UUID, provider: RecordingProvider, clock: FakeClock
) -> None:
    provider.failures = 1
    async with running_herald(engine, provider, clock) as herald:
        job = await submit(engine, ws, chat=None)
        await run_job(engine, job, lambda ctx: _none(), status=JobStatus.COMPLETED)
        short = job.id
        await said(provider, "channel:C-default", f"🟢 Job {short} for", f"✅ Job {short}")
        assert herald.failed_sends == 1

        provider.connected = False
        again = await submit(engine, ws, chat=None)
        await run_job(engine, again, lambda ctx: _none(), status=JobStatus.COMPLETED)

        async def waiting() -> bool:
            return herald.pending > 0 and herald.last_seq(again.id) == 4

        await wait_until(waiting, what="updates to wait for the connection")
        assert str(again.id) not in provider.shown("channel:C-default")
        provider.connected = True
        await said(provider, "channel:C-default", f"✅ Job {again.id}")


async def _none() -> dict[str, Any] | None:
    return None


def test_rates_and_queue_sizes_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="at least 1 message"):
        ChatRate(messages=0)
    with pytest.raises(ConfigError, match="positive number of seconds"):
        ChatRate(messages=5, per_s=0)
    with pytest.raises(ConfigError, match="queue_size"):
        Herald(
            engine.bus,
            engine.store,
            RecordingProvider(FakeClock()),
            routes={},
            default_channel=None,
            queue_size=0,
        )
