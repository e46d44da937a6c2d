"""The scheduler loop: advances running executions when their jobs end, and on a timer.

In-process wake-ups come from the event bus (a node's job ended; an execution started or
resumed). The timer catches what the bus cannot carry (jobs finished by worker processes when
no tailer republishes them, expired pull leases) and, at start, resumes every running
execution left by a previous process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from uuid import UUID

import structlog

from stitchwork.bus.base import EventBus, EventFilter, SubscriptionClosed
from stitchwork.domain.events import TERMINAL_JOB_EVENTS, EventType
from stitchwork.domain.executions import ExecutionStatus
from stitchwork.services.stitcher import Stitcher
from stitchwork.storage.executions import SqlExecutionStore

log = structlog.get_logger(__name__)

_WAKE_TYPES = (
    *sorted(TERMINAL_JOB_EVENTS),
    EventType.EXECUTION_STARTED.value,
    EventType.EXECUTION_RESUMED.value,
)


class Scheduler:
    def __init__(
        self,
        stitcher: Stitcher,
        store: SqlExecutionStore,
        bus: EventBus,
        *,
        interval_s: float,
        actor: str = "scheduler",
    ) -> None:
        self.stitcher = stitcher
        self.store = store
        self.bus = bus
        self.interval_s = interval_s
        self.actor = actor
        self._due: set[UUID] = set()
        self._wake = asyncio.Event()

    def poke(self, execution_id: UUID) -> None:
        self._due.add(execution_id)
        self._wake.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="scheduler-listen")
        drained_at = float("-inf")
        try:
            await self._tick_all()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
                self._wake.clear()
                if time.monotonic() - drained_at >= self.interval_s:
                    # Also under a steady stream of wake-ups, which starve the timer's ticks.
                    drained_at = time.monotonic()
                    await self._release_drained()
                if self._due:
                    due, self._due = self._due, set()
                    for execution_id in due:
                        await self._advance(execution_id)
                else:
                    await self._tick_all()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _tick_all(self) -> None:
        try:
            async with self.store.db.read() as conn:
                ids = await self.store.ids_with_status(conn, [ExecutionStatus.RUNNING])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler_list_failed")
            return
        for execution_id in ids:
            await self._advance(execution_id)

    async def _release_drained(self) -> None:
        try:
            released = await self.stitcher.release_drained(actor=self.actor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler_release_drained_failed")
            return
        if released:
            log.info("drained_locks_released", owners=released)
            self._wake.set()  # nodes they blocked may start now

    async def _advance(self, execution_id: UUID) -> None:
        try:
            await self.stitcher.advance(execution_id, actor=self.actor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler_advance_failed", execution_id=str(execution_id))

    async def _listen(self) -> None:
        while True:
            subscription = self.bus.subscribe(EventFilter(types=_WAKE_TYPES))
            try:
                async for event in subscription:
                    if event.execution_id is not None:
                        self.poke(event.execution_id)
                    elif event.job_id is not None:
                        execution_id = self.stitcher.job_node(event.job_id)
                        if execution_id is not None:
                            self.poke(execution_id)
            except SubscriptionClosed:
                if getattr(self.bus, "closed", False):
                    return  # shutting down: the timer alone carries on until cancelled
                self._wake.set()  # fell behind: the next tick looks at everything
                await asyncio.sleep(0)
            finally:
                subscription.close()
