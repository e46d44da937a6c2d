"""The health report of a process on BullMQ: the broker's state, counts and drift, and a
degraded (not failed) answer while Redis is unreachable."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from stitchwork.api.app import create_app
from stitchwork.domain.jobs import NewJob
from tests.conftest import Backend

pytestmark = pytest.mark.redis


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://h.test")  # type: ignore[arg-type]


async def test_health_reports_bullmq_counts_and_the_last_reconciliation(
    bullmq_backend: Backend,
) -> None:
    engine = await bullmq_backend.open_engine()
    try:
        ws, _ = await engine.auth.ensure_workspace()
        await engine.jobs.submit_many(ws.id, [NewJob("noop")] * 3, actor="t")
        drift = await engine.reconciler().reconcile_once()
        assert (drift.queued, drift.missing) == (0, 0)  # just queued: inside the grace window
        async with _client(create_app(engine)) as client:
            report = (await client.get("/api/v1/health")).json()
        queue = report["queue"]
        assert report["status"] == "ok"
        assert (queue["backend"], queue["ok"], queue["reconnects"]) == ("bullmq", True, 0)
        assert queue["prefix"] == f"{bullmq_backend.extra['bullmq_prefix']}:stitchwork."
        assert queue["queues"]["default"]["prioritized"] == 3
        assert queue["drift"]["missing"] == 0
    finally:
        await engine.close()


async def test_health_is_degraded_not_failed_while_redis_is_unreachable(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = Backend(
        "bullmq",
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        extra={"queue_url": f"redis://127.0.0.1:{port}/0"},
    )
    engine = await backend.open_engine()  # starts anyway: every loop retries
    try:
        ws, _ = await engine.auth.ensure_workspace()
        # The job is committed to the database; Redis gets it from the reconciler later.
        job = (await engine.jobs.submit(ws.id, NewJob("noop"), actor="t")).job
        assert (await engine.store.get_job(job.id)).status.value == "queued"
        async with _client(create_app(engine)) as client:
            response = await client.get("/api/v1/health")
        report = response.json()
        assert response.status_code == 200
        assert report["status"] == "degraded"
        assert report["queue"]["ok"] is False
        assert "Connection" in report["queue"]["last_error"]
        with pytest.raises(Exception, match="Connect"):
            await engine.reconciler().reconcile_once()
    finally:
        await engine.close()
