"""The queue port. The database stays the truth: a backend only decides delivery order and
wake-ups; every status change still goes through the job store's guarded transitions."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from stitchwork.domain.jobs import Job

if TYPE_CHECKING:
    from stitchwork.storage.rows import Tx

CancelListener = Callable[[UUID], None]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    paused: bool
    queued: int
    running: int


class QueueBackend(Protocol):
    async def start(self) -> None:
        """Open connections and listeners."""
        ...

    async def close(self) -> None: ...

    async def reserve(
        self, worker_id: str, limit: int, lease: timedelta, *, queues: Collection[str] | None = None
    ) -> list[Job]:
        """Take up to ``limit`` due jobs (priority, then due time, then FIFO) from unpaused
        queues; they come back ``running`` and leased to ``worker_id``."""
        ...

    async def notify_cancelled(self, job_ids: Collection[UUID]) -> None:
        """Tell the workers running these jobs to stop them."""
        ...

    async def cancelled_in(self, tx: Tx, job_ids: Collection[UUID]) -> None:
        """``notify_cancelled`` for jobs cancelled in ``tx``, delivered once it commits."""
        ...

    def add_cancel_listener(self, listener: CancelListener) -> None: ...

    def remove_cancel_listener(self, listener: CancelListener) -> None: ...

    async def wait_for_work(
        self, timeout: timedelta, *, queues: Collection[str] | None = None
    ) -> None:
        """Return when work may be available (in ``queues``, or any), or after ``timeout``."""
        ...

    async def pause(self, name: str) -> None: ...

    async def resume(self, name: str) -> None: ...

    async def list_queues(self, workspace_id: UUID | None = None) -> list[QueueInfo]:
        """Every queue's pause state (global) with its queued and running jobs (of one
        workspace when ``workspace_id`` is given)."""
        ...

    def settle(self, job_ids: Collection[UUID]) -> None:
        """The worker is done with these deliveries, however the jobs ended (the database has
        recorded it): a broker that tracks deliveries acknowledges them. Never blocks."""
        ...

    async def reconcile(self) -> Drift:
        """Compare the broker with the database and repair it: re-deliver jobs the database
        says are queued but the broker lost."""
        ...

    async def status(self) -> dict[str, Any]:
        """Connection state and the last reconciliation, for the health report."""
        ...


@dataclass(frozen=True, slots=True)
class Drift:
    """What a reconciliation found: ``missing`` queued jobs the broker did not hold (now
    re-added), out of ``queued`` checked."""

    queued: int = 0
    missing: int = 0
