"""Metrics (JSON and Prometheus text) and the health report.

The JSON metrics need a key and show its workspace (``?all=true``, with ``metrics:all``: the
whole database). The Prometheus exposition and the health report need no key, so they carry
aggregates only: counts by status and queue name, never an id.
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from stitchwork import __version__
from stitchwork.api.deps import EngineDep, require
from stitchwork.api.figures import metrics_report
from stitchwork.runtime.metrics import process_figures, snapshot
from stitchwork.services.auth import Principal, Scope
from stitchwork.storage.executions import stalled_executions
from stitchwork.storage.migrate import current_revision

router = APIRouter(tags=["metrics"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/api/v1/metrics")
async def metrics_json(
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.METRICS_READ)],
    all_: Annotated[
        bool, Query(alias="all", description="database-wide figures (needs metrics:all)")
    ] = False,
) -> dict[str, Any]:
    """Jobs, queues, executions and locks of the caller's workspace, this process's figures,
    the per-execution metrics of the workspace's running and paused executions, and its
    stalled executions."""
    if all_:
        principal.require(Scope.METRICS_ALL)
    return await metrics_report(engine, principal.workspace_id, everything=all_)


@router.get("/metrics", include_in_schema=False)
async def metrics_prometheus(engine: EngineDep) -> Response:
    """Prometheus exposition (no auth, like the probes; counts only, no names)."""
    body = engine.metrics.exposition(await snapshot(engine.db))
    return Response(body, media_type=PROMETHEUS_TEXT)


@router.get("/api/v1/health", response_model=None)
async def health(engine: EngineDep) -> dict[str, Any] | JSONResponse:
    """200 when the database answers, else 503; with execution counts, the number of stalled
    executions (running, no event for ``STITCHWORK_STALL_AFTER``, no running node alive; their
    ids are in the JSON metrics of their workspace), process memory and limits, the
    reachability of the database, queue and bus, and how jobs are confined (``sandbox``)."""
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
    queue_url = _without_password(engine.settings.queue_url)  # no auth here
    report["queue"] = {"url": queue_url, **queue, "ok": db_ok and queue["ok"]}
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
        report["stalled"] = len(stalled)  # no auth here: a count, never whose
    report["process"] = process_figures()
    # How jobs' commands are confined here: "bwrap", "off" (opted out) or "unavailable".
    report["sandbox"] = engine.confinement.sandbox.status()
    # A broker outage degrades (jobs wait; the reconciler restores them); no database is fatal.
    report["status"] = "unavailable" if not db_ok else "ok" if report["queue"]["ok"] else "degraded"
    if not db_ok:
        return JSONResponse(report, status_code=503)
    return report


def _without_password(url: str) -> str:
    """``url`` with any password replaced (the health report needs no key)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
