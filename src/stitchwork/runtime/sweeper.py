"""The lease sweeper: finds running jobs whose worker stopped heart-beating."""

from __future__ import annotations

import asyncio

import structlog

from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.leases import SweepResult

log = structlog.get_logger(__name__)


class LeaseSweeper:
    """Re-queued jobs wake workers from inside the sweep's transaction (the store's hook)."""

    def __init__(self, store: SqlJobStore, *, interval_s: float, actor: str) -> None:
        self.store = store
        self.interval_s = interval_s
        self.actor = actor

    async def sweep_once(self) -> SweepResult:
        result = await self.store.expire_leases(actor=self.actor)
        for job in result.requeued:
            log.warning("lease_expired_requeued", job_id=str(job.id), attempt=job.attempt)
        for job in result.failed:
            log.warning("lease_expired_failed", job_id=str(job.id), attempt=job.attempt)
        return result

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep_failed")
            await asyncio.sleep(self.interval_s)
