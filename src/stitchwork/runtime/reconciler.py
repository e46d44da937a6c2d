"""The reconciler: keeps the broker in line with the database, which is the truth.

At start and every ``reconcile_interval`` it asks the queue backend to re-deliver what the
database says is queued but the broker does not hold (Redis restarted without persistence or
was flushed, or an add failed after its commit). Running jobs whose lease expired are the
lease sweeper's (``runtime/sweeper.py``), which runs beside it.
"""

from __future__ import annotations

import asyncio

import structlog

from stitchwork.queue.base import Drift, QueueBackend

log = structlog.get_logger(__name__)


class Reconciler:
    def __init__(self, queue: QueueBackend, *, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.failures = 0

    async def reconcile_once(self) -> Drift:
        drift = await self.queue.reconcile()
        if drift.missing:
            log.warning("broker_drift_repaired", missing=drift.missing, queued=drift.queued)
        return drift

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                # Once per outage at warning level; the queue's status() reports it too.
                level = log.warning if self.failures == 1 else log.debug
                level("reconcile_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(self.interval_s)
