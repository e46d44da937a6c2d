"""Liveness and readiness probes (no auth: for load balancers and process managers)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from stitchwork.api.deps import EngineDep
from stitchwork.storage.migrate import current_revision, head_revision

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(engine: EngineDep) -> dict[str, Any] | JSONResponse:
    """Ready when the database answers and its schema is current; 503 otherwise."""
    try:
        revision = await current_revision(engine.db)
    except Exception as exc:
        return JSONResponse(
            {"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"},
            status_code=503,
        )
    head = head_revision()
    if revision != head:
        return JSONResponse(
            {
                "status": "unavailable",
                "database": f"schema at {revision}, expected {head}: run `stitchwork db upgrade`",
            },
            status_code=503,
        )
    return {"status": "ready", "database": "ok", "schema": revision}
