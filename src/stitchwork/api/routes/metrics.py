"""Metrics (JSON and Prometheus text) and the health report."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from stitchwork import __version__
from stitchwork.api.deps import EngineDep, PrincipalDep
from stitchwork.domain.executions import ACTIVE_EXECUTION_STATUSES
from stitchwork.runtime.metrics import process_figures, snapshot
from stitchwork.services.executions import execution_metrics
from stitchwork.storage.executions import stalled_executions
from stitchwork.storage.migrate import current_revision

router = APIRouter(tags=["metrics"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/api/v1/metrics")
async def metrics_json(engine: EngineDep, principal: PrincipalDep) -> dict[str, Any]:
    """Jobs, queues, executions and locks (database-wide), this process's figures, and the
    per-execution metrics of the workspace's running and paused executions."""
    figures = await snapshot(engine.db)
    active = []
    for status in sorted(ACTIVE_EXECUTION_STATUSES):
        for ex in await engine.executions.list_executions(
            principal.workspace_id, status=status, limit=200
        ):
            full = await engine.executions.get(principal.workspace_id, ex.id)
            active.append({"id": str(ex.id), "status": ex.status.value, **execution_metrics(full)})
    return {**figures, "process": process_figures(), "executions": active}


@router.get("/metrics", include_in_schema=False)
async def metrics_prometheus(engine: EngineDep) -> Response:
    """Prometheus exposition (no auth, like the probes; counts only, no names)."""
    body = engine.metrics.exposition(await snapshot(engine.db))
    return Response(body, media_type=PROMETHEUS_TEXT)


@router.get("/api/v1/health", response_model=None)
async def health(engine: EngineDep) -> dict[str, Any] | JSONResponse:
    """200 when the database answers, else 503; with execution counts, stalled executions
    (running, no event for ``STITCHWORK_STALL_AFTER``, no running node alive), process memory
    and limits, and the reachability of the database, queue and bus."""
    started = time.perf_counter()
    report: dict[str, Any] = {"version": __version__}
    try:
        revision = await current_revision(engine.db)
        report["database"] = {
            "ok": True,
            "schema": revision,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    except Exception as exc:
        report["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    db_ok = report["database"]["ok"]
    queue = await engine.queue.status()
    report["queue"] = {"url": engine.settings.queue_url, **queue, "ok": db_ok and queue["ok"]}
    bus = engine.relay.status()
    report["bus"] = {"ok": bool(bus.get("connected", True)), **bus}
    if db_ok:
        now = engine.clock.now()
        async with engine.db.read() as conn:
            counts = await engine.executions.store.count_by_status(conn)
            stalled = await stalled_executions(
                conn, quiet_since=now - engine.settings.stall_after, now=now
            )
        report["executions"] = {
            s: counts.get(s, 0)
            for s in ("planned", "running", "paused", "completed", "failed", "aborted")
        }
        report["stalled"] = [
            {"id": str(execution_id), "last_event_at": last.isoformat()}
            for execution_id, last in stalled
        ]
    report["process"] = process_figures()
    # A broker outage degrades (jobs wait; the reconciler restores them); no database is fatal.
    report["status"] = "unavailable" if not db_ok else "ok" if report["queue"]["ok"] else "degraded"
    if not db_ok:
        return JSONResponse(report, status_code=503)
    return report
