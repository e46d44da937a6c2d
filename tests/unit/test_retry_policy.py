"""Retry delays: exponential, capped, jittered within bounds; and the retry decision."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stitchwork.domain.retry import RetryPolicy, should_retry

ONE_US = timedelta(microseconds=1)  # timedelta(seconds=float) rounds to microseconds

durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2))
attempts = st.integers(min_value=1, max_value=500)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
jitters = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def policies(draw: st.DrawFn, jitter: st.SearchStrategy[float] = jitters) -> RetryPolicy:
    return RetryPolicy(base=draw(durations), maximum=draw(durations), jitter=draw(jitter))


@given(policies(), attempts, unit)
def test_delay_is_never_negative_nor_above_maximum(
    policy: RetryPolicy, attempt: int, r: float
) -> None:
    delay = policy.delay(attempt, r)
    assert timedelta(0) <= delay <= policy.maximum


@given(policies(jitter=st.just(0.0)), st.integers(min_value=1, max_value=200), unit)
def test_delay_without_jitter_grows_with_attempt(
    policy: RetryPolicy, attempt: int, r: float
) -> None:
    assert policy.delay(attempt + 1, r) >= policy.delay(attempt, r)


@given(
    st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(seconds=10)),
    st.integers(min_value=1, max_value=30),
)
def test_delay_without_jitter_doubles_from_base_until_capped(base: timedelta, attempt: int) -> None:
    maximum = timedelta(hours=1)
    policy = RetryPolicy(base=base, maximum=maximum, jitter=0.0)
    expected = min(base * 2 ** (attempt - 1), maximum)
    assert abs(policy.delay(attempt, 0.3) - expected) <= ONE_US


@given(policies(), attempts, unit)
def test_jitter_spreads_the_delay_by_at_most_its_fraction(
    policy: RetryPolicy, attempt: int, r: float
) -> None:
    raw = RetryPolicy(policy.base, policy.maximum, jitter=0.0).delay(attempt, 0.0)
    delay = policy.delay(attempt, r)
    assert abs(delay - raw) <= raw * policy.jitter + ONE_US


def test_jitter_covers_both_directions_and_midpoint_is_unjittered() -> None:
    policy = RetryPolicy(base=timedelta(seconds=10), maximum=timedelta(minutes=5), jitter=0.2)
    assert policy.delay(1, 0.0) == timedelta(seconds=8)
    assert policy.delay(1, 0.5) == timedelta(seconds=10)
    assert timedelta(seconds=11.9) < policy.delay(1, 0.9999) <= timedelta(seconds=12)


def test_jittered_delay_at_the_cap_never_exceeds_the_cap() -> None:
    policy = RetryPolicy(base=timedelta(seconds=1), maximum=timedelta(seconds=30), jitter=1.0)
    assert policy.delay(50, 0.9999) == timedelta(seconds=30)
    assert policy.delay(50, 0.0) == timedelta(0)


def test_huge_attempt_numbers_are_capped_without_overflow() -> None:
    policy = RetryPolicy(base=timedelta(seconds=1), maximum=timedelta(minutes=5), jitter=0.0)
    assert policy.delay(10_000_000, 0.5) == timedelta(minutes=5)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_start_at_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt starts at 1"):
        RetryPolicy().delay(attempt, 0.5)


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [(1, 1, False), (1, 2, True), (2, 2, False), (2, 3, True), (3, 3, False), (5, 3, False)],
)
def test_should_retry_while_attempts_remain(
    attempt: int, max_attempts: int, expected: bool
) -> None:
    assert should_retry(attempt, max_attempts) is expected


@given(st.integers(min_value=1, max_value=100), st.integers(min_value=1, max_value=100))
def test_should_retry_allows_exactly_max_attempts_runs(attempt: int, max_attempts: int) -> None:
    assert should_retry(attempt, max_attempts) == (attempt < max_attempts)
