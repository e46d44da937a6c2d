"""The JSON metrics report: one workspace's figures, or (``everything``) the database's.

The figures are ``runtime.metrics.snapshot``'s (which the Prometheus exposition uses,
database-wide and without ids), of one workspace unless ``everything``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select

from stitchwork.domain.executions import ACTIVE_EXECUTION_STATUSES
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.metrics import process_figures, snapshot
from stitchwork.services.executions import execution_metrics
from stitchwork.storage.executions import stalled_executions
from stitchwork.storage.tables import executions

ACTIVE_LISTED = 200  # active executions listed with their own metrics


async def metrics_report(engine: Engine, workspace_id: UUID, *, everything: bool) -> dict[str, Any]:
    """Jobs, queues, executions and locks of the workspace (of the database with
    ``everything``), this process's figures, the per-execution metrics of the workspace's
    running and paused executions, and its stalled executions (every one with
    ``everything``)."""
    figures = await snapshot(engine.db, None if everything else workspace_id)
    active = []
    for status in sorted(ACTIVE_EXECUTION_STATUSES):
        for ex in await engine.executions.list_executions(
            workspace_id, status=status, limit=ACTIVE_LISTED
        ):
            full = await engine.executions.get(workspace_id, ex.id)
            active.append({"id": str(ex.id), "status": ex.status.value, **execution_metrics(full)})
    now = engine.clock.now()
    async with engine.db.read() as conn:
        stalled = await stalled_executions(
            conn, quiet_since=now - engine.settings.stall_after, now=now
        )
        if not everything and stalled:
            own = await conn.execute(
                select(executions.c.id).where(
                    executions.c.id.in_([execution_id for execution_id, _ in stalled]),
                    executions.c.workspace_id == workspace_id,
                )
            )
            mine = set(own.scalars())
            stalled = [(execution_id, at) for execution_id, at in stalled if execution_id in mine]
    return {
        **figures,
        "scope": "database" if everything else "workspace",
        "process": process_figures(),
        "executions": active,
        "stalled": [
            {"id": str(execution_id), "last_event_at": at.isoformat()}
            for execution_id, at in stalled
        ],
    }
