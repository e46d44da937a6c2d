"""When to try a failed job again: exponential backoff with jitter, capped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=1)
    maximum: timedelta = timedelta(minutes=5)
    jitter: float = 0.2

    def delay(self, attempt: int, unit_random: float) -> timedelta:
        """Delay before attempt ``attempt + 1`` after attempt ``attempt`` failed.

        ``unit_random`` is a number in [0, 1) supplied by the caller so the policy stays pure.
        The delay is ``base * 2**(attempt-1)`` capped at ``maximum``, then spread by up to
        ``±jitter`` of itself so that jobs that failed together do not retry in lock-step.
        """
        if attempt < 1:
            raise ValueError("attempt starts at 1")
        exponent = min(attempt - 1, 62)
        raw = min(self.base.total_seconds() * (2**exponent), self.maximum.total_seconds())
        spread = raw * self.jitter * (2 * unit_random - 1)
        return timedelta(seconds=max(0.0, min(raw + spread, self.maximum.total_seconds())))


def should_retry(attempt: int, max_attempts: int) -> bool:
    """A failed attempt is retried while attempts remain."""
    return attempt < max_attempts
