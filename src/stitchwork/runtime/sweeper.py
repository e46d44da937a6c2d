"""The lease sweeper: finds running jobs whose worker stopped heart-beating.

Each sweep first lets this process's ``ProcessJanitor`` (when it has one) refresh the host's
row and kill what dead workers of this host left running; a job is then re-queued only once
no recorded process group of it is alive on a live host.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from stitchwork.runtime.janitor import ProcessJanitor
from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.leases import SweepResult

log = structlog.get_logger(__name__)


class LeaseSweeper:
    """Re-queued jobs wake workers from inside the sweep's transaction (the store's hook)."""

    def __init__(
        self,
        store: SqlJobStore,
        *,
        interval_s: float,
        actor: str,
        janitor: ProcessJanitor | None = None,
        host_grace: timedelta | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.actor = actor
        self.janitor = janitor
        self.host_grace = host_grace

    async def sweep_once(self) -> SweepResult:
        if self.janitor is not None:
            await self.janitor.sweep_once()
        result = await self.store.expire_leases(actor=self.actor, host_grace=self.host_grace)
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
