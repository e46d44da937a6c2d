"""The event bus port.

Events are published after the transaction that wrote them committed, so a subscriber never
sees an event the database does not have. Delivery is best-effort and bounded: the database is
the record, and a subscriber that falls behind is disconnected with the seq to resume from.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from stitchwork.domain.events import Event


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants. Unset fields match everything; ``types`` holds glob
    patterns such as ``step.*`` (``*`` and ``?`` only: ``[`` is literal, as in the database
    filter, so live and stored events always match the same patterns)."""

    job_id: UUID | None = None
    execution_id: UUID | None = None
    workspace_id: UUID | None = None
    types: tuple[str, ...] = ()

    def matches(self, event: Event) -> bool:
        if self.job_id is not None and event.job_id != self.job_id:
            return False
        if self.execution_id is not None and event.execution_id != self.execution_id:
            return False
        if self.workspace_id is not None and event.workspace_id != self.workspace_id:
            return False
        return not self.types or any(
            fnmatch.fnmatchcase(event.type, p.replace("[", "[[]")) for p in self.types
        )


class SubscriptionClosed(Exception):
    """The bus dropped this subscriber; ``reason`` says why and ``last_event`` what it had."""

    def __init__(self, reason: str, last_event: Event | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.last_event = last_event


# Takes a batch of live events off the bus's hands (writes them out at once) and returns True,
# or returns False to leave them to the consumer waiting in get_batch. Never awaits.
Sink = Callable[[list[Event]], bool]


class Subscription(Protocol):
    sink: Sink | None
    """Set by a consumer that can write live events without being woken (see the adapter)."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None after ``timeout_s``; raises ``SubscriptionClosed``."""
        ...

    async def get_batch(self, timeout_s: float | None = None) -> list[Event]:
        """Every event queued so far (at least one), or ``[]`` after ``timeout_s``; raises
        ``SubscriptionClosed``. A stream writes them together: one write per wake-up."""
        ...

    def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, events: Sequence[Event]) -> None: ...

    def subscribe(
        self, event_filter: EventFilter, *, buffer: int | None = None
    ) -> Subscription: ...
