"""Helpers for the API tests: submitting, moving a job through worker-side transitions
deterministically (no worker loop, no sleeps) and checking problem+json answers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx

from stitchwork.domain.jobs import Job
from stitchwork.runtime.engine import Engine

JOBS = "/api/v1/jobs"
PROBLEM = "application/problem+json"
WORKER = "test-worker"
LEASE = timedelta(seconds=60)


async def submit(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """POST /jobs (a noop job unless ``type`` is given); asserts it was created."""
    response = await api.post(JOBS, json={"type": "noop", **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def job_count(engine: Engine) -> int:
    return sum((await engine.store.count_by_status()).values())


async def start(engine: Engine, job_id: str | UUID) -> Job:
    """Reserve the job as ``WORKER`` would: queued -> running. It must be the only job due."""
    reserved = await engine.queue.reserve(WORKER, 1, LEASE)
    assert [j.id for j in reserved] == [UUID(str(job_id))], "expected exactly this job to be due"
    return reserved[0]


async def complete(engine: Engine, job_id: str | UUID, result: dict[str, Any] | None = None) -> Job:
    """queued -> running -> completed through the store's guarded transitions."""
    await start(engine, job_id)
    done = await engine.store.complete_job(UUID(str(job_id)), WORKER, result)
    assert done is not None
    return done


async def fail(engine: Engine, job_id: str | UUID, error: str = "boom") -> Job:
    """queued -> running -> failed (terminally: no retry left)."""
    await start(engine, job_id)
    failed = await engine.store.fail_job(
        UUID(str(job_id)), WORKER, error=error, result=None, retry_after=None
    )
    assert failed is not None
    return failed


def assert_problem(
    response: httpx.Response, status: int, *phrases: str, field: str | None = None
) -> dict[str, Any]:
    """A problem+json answer with ``status`` whose detail contains every phrase (and which
    names ``field`` in its ``errors`` list, when given). Returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    for phrase in phrases:
        assert phrase in body["detail"], f"{phrase!r} not in {body['detail']!r}"
    if field is not None:
        fields = [e["field"] for e in body.get("errors", [])]
        assert field in fields, f"{field!r} not named in {fields!r}"
    return body
