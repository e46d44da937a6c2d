"""What a handler gets: progress coalescing, the stop signal, bounded output tails."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.runner.process import OutputTail
from stitchwork.runtime import context
from stitchwork.runtime.context import JobContext

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job() -> Job:
    return Job(
        id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
        type="noop",
        status=JobStatus.RUNNING,
        queue_name="default",
        priority=0,
        payload={},
        result=None,
        error=None,
        progress_percent=0,
        attempt=1,
        max_attempts=3,
        idempotency_key=None,
        version=3,
        lease_owner="w",
        lease_expires_at=T0,
        run_after=T0,
        created_at=T0,
        queued_at=T0,
        started_at=T0,
        completed_at=None,
        updated_at=T0,
    )


class _Sink:
    def __init__(self) -> None:
        self.sent: list[int] = []

    async def __call__(self, percent: int) -> bool:
        self.sent.append(percent)
        return True


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(context.time, "monotonic", lambda: now[0])
    return now


async def test_progress_is_clamped_and_unchanged_values_are_dropped(
    monotonic: list[float],
) -> None:
    sink = _Sink()
    ctx = JobContext(_job(), sink)
    await ctx.progress(-5)
    monotonic[0] += 1
    await ctx.progress(0)  # unchanged
    monotonic[0] += 1
    await ctx.progress(250)
    assert sink.sent == [0, 100]


async def test_progress_closer_than_the_interval_is_coalesced_except_100(
    monotonic: list[float],
) -> None:
    sink = _Sink()
    ctx = JobContext(_job(), sink)
    await ctx.progress(10)
    monotonic[0] += context.PROGRESS_MIN_INTERVAL_S / 2
    await ctx.progress(20)  # too soon: dropped
    monotonic[0] += context.PROGRESS_MIN_INTERVAL_S / 2
    await ctx.progress(30)
    await ctx.progress(100)  # too soon, but completion is always sent
    assert sink.sent == [10, 30, 100]


async def test_sleep_returns_true_at_once_when_stop_was_requested() -> None:
    ctx = JobContext(_job(), _Sink())
    assert await ctx.sleep(0) is False
    ctx.stop_requested.set()
    assert await ctx.sleep(3600) is True


@given(st.lists(st.text(max_size=50), max_size=40), st.integers(min_value=0, max_value=120))
def test_output_tail_keeps_exactly_the_last_characters_in_bounded_memory(
    chunks: list[str], limit: int
) -> None:
    tail = OutputTail(limit)
    for chunk in chunks:
        tail.add(chunk)
        kept = list(tail._chunks)
        # Never holds more than what the limit needs plus the chunk that crosses it.
        assert not kept or sum(len(c) for c in kept[1:]) < max(limit, 1)
    whole = "".join(chunks)
    assert tail.text() == (whole[-limit:] if limit else "")
