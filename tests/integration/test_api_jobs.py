"""The jobs, queues and health endpoints through the real app, on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import httpx

from stitchwork.domain.jobs import JobStatus
from stitchwork.runtime.engine import Engine
from stitchwork.storage.migrate import downgrade, head_revision
from tests.integration.conftest import ClientFactory
from tests.integration.helpers import JOBS, LEASE, WORKER, complete, fail, job_count, submit

# -- submit -----------------------------------------------------------------------------------


async def test_submit_returns_201_with_location_and_the_queued_job(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(
        JOBS,
        json={
            "type": "shell",
            "payload": {"command": "echo hi"},
            "priority": 5,
            "issue_ref": "GH-1",
            "max_attempts": 2,
        },
    )

    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"{JOBS}/{job['id']}"
    assert "idempotent-replayed" not in response.headers
    assert job["type"] == "shell"
    assert job["status"] == "queued"
    assert job["payload"] == {"command": "echo hi"}
    assert (job["priority"], job["issue_ref"], job["max_attempts"]) == (5, "GH-1", 2)
    assert (job["attempt"], job["version"], job["queue"]) == (1, 1, "default")
    stored = await engine.store.get_job(UUID(job["id"]))
    assert stored.status is JobStatus.QUEUED


async def test_submit_fills_defaults_from_settings(api: httpx.AsyncClient, engine: Engine) -> None:
    job = await submit(api)

    assert job["priority"] == 0
    assert job["max_attempts"] == engine.settings.max_attempts
    assert job["payload"] == {}
    assert job["idempotency_key"] is None


async def test_same_idempotency_key_in_body_replays_the_first_job_with_200(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    body = {"type": "noop", "idempotency_key": "deploy-42"}
    first = await api.post(JOBS, json=body)
    second = await api.post(JOBS, json=body)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert await job_count(engine) == 1


async def test_same_idempotency_key_header_replays_the_first_job_with_200(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    headers = {"Idempotency-Key": "deploy-43"}
    first = await api.post(JOBS, json={"type": "noop"}, headers=headers)
    second = await api.post(JOBS, json={"type": "noop"}, headers=headers)

    assert first.status_code == 201
    assert first.json()["idempotency_key"] == "deploy-43"
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert await job_count(engine) == 1


async def test_header_key_replays_a_job_created_with_the_same_body_key(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    first = await api.post(JOBS, json={"type": "noop", "idempotency_key": "k-1"})
    second = await api.post(
        JOBS,
        json={"type": "noop", "idempotency_key": "k-1"},
        headers={"Idempotency-Key": "k-1"},
    )
    third = await api.post(JOBS, json={"type": "noop"}, headers={"Idempotency-Key": "k-1"})

    assert first.status_code == 201
    assert [second.status_code, third.status_code] == [200, 200]
    assert {second.json()["id"], third.json()["id"]} == {first.json()["id"]}
    assert await job_count(engine) == 1


async def test_header_and_body_idempotency_keys_that_differ_are_refused_and_nothing_stored(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(
        JOBS,
        json={"type": "noop", "idempotency_key": "body-key"},
        headers={"Idempotency-Key": "header-key"},
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert "Idempotency-Key header and the idempotency_key field differ" in body["detail"]
    assert [e["field"] for e in body["errors"]] == ["idempotency_key"]
    assert await job_count(engine) == 0


async def test_idempotency_keys_are_scoped_to_the_workspace(
    api: httpx.AsyncClient, client_for: ClientFactory, engine: Engine
) -> None:
    other = await client_for("other")
    mine = await api.post(JOBS, json={"type": "noop", "idempotency_key": "shared"})
    theirs = await other.post(JOBS, json={"type": "noop", "idempotency_key": "shared"})

    assert [mine.status_code, theirs.status_code] == [201, 201]
    assert mine.json()["id"] != theirs.json()["id"]
    assert mine.json()["workspace_id"] != theirs.json()["workspace_id"]
    assert await job_count(engine) == 2


# -- list -------------------------------------------------------------------------------------


async def test_list_filters_by_status_type_and_issue_ref(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    done = await submit(api, type="noop", issue_ref="GH-7")
    await complete(engine, done["id"])
    sleeper = await submit(api, type="sleep", payload={"seconds": 1}, issue_ref="GH-7")
    other = await submit(api, type="noop", issue_ref="GH-8")

    async def ids(**params: str) -> list[str]:
        response = await api.get(JOBS, params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["items"]]

    assert await ids(status="completed") == [done["id"]]
    assert await ids(status="queued") == [other["id"], sleeper["id"]]
    assert await ids(type="sleep") == [sleeper["id"]]
    assert await ids(issue_ref="GH-7") == [sleeper["id"], done["id"]]
    assert await ids(issue_ref="GH-7", type="noop") == [done["id"]]
    assert await ids(status="failed") == []
    assert await ids() == [other["id"], sleeper["id"], done["id"]]


async def test_cursor_pagination_walks_every_job_exactly_once_newest_first(
    api: httpx.AsyncClient,
) -> None:
    created = [(await submit(api))["id"] for _ in range(7)]

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(JOBS, params=params)).json()
        pages.append([j["id"] for j in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(p) for p in pages] == [3, 3, 1]
    walked = [job_id for page in pages for job_id in page]
    assert walked == list(reversed(created))
    assert len(set(walked)) == 7


async def test_a_last_page_that_is_exactly_full_has_no_next_cursor(
    api: httpx.AsyncClient,
) -> None:
    created = [(await submit(api))["id"] for _ in range(6)]

    first = (await api.get(JOBS, params={"limit": 3})).json()
    second = (await api.get(JOBS, params={"limit": 3, "cursor": first["next_cursor"]})).json()

    assert [j["id"] for j in first["items"] + second["items"]] == list(reversed(created))
    assert first["next_cursor"] == first["items"][-1]["id"]
    assert second["next_cursor"] is None


async def test_list_never_shows_another_workspaces_jobs(
    api: httpx.AsyncClient, client_for: ClientFactory
) -> None:
    mine = await submit(api)
    other = await client_for("other")
    await submit(other)

    listed = (await api.get(JOBS)).json()["items"]

    assert [j["id"] for j in listed] == [mine["id"]]


# -- one job ----------------------------------------------------------------------------------


async def test_get_job_returns_the_stored_job(api: httpx.AsyncClient) -> None:
    job = await submit(api, type="sleep", payload={"seconds": 2}, issue_ref="GH-3")

    response = await api.get(f"{JOBS}/{job['id']}")

    assert response.status_code == 200
    assert response.json() == {**job, "steps": []}  # no step has run yet


async def test_events_are_created_then_queued_and_after_skips_earlier_ones(
    api: httpx.AsyncClient,
) -> None:
    job = await submit(api, issue_ref="GH-9")

    events = (await api.get(f"{JOBS}/{job['id']}/events")).json()
    later = (await api.get(f"{JOBS}/{job['id']}/events", params={"after": 1})).json()
    none = (await api.get(f"{JOBS}/{job['id']}/events", params={"after": 2})).json()

    assert [(e["seq"], e["type"]) for e in events] == [(1, "job.created"), (2, "job.queued")]
    assert all(e["job_id"] == job["id"] for e in events)
    assert events[0]["actor"] == "key:test"
    assert events[0]["payload"]["issue_ref"] == "GH-9"
    assert [e["seq"] for e in later] == [2]
    assert none == []


async def test_cancel_of_a_queued_job_cancels_it_and_records_the_event(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api)

    response = await api.post(f"{JOBS}/{job['id']}/cancel")

    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["completed_at"] is not None
    assert cancelled["version"] == job["version"] + 1
    events = (await api.get(f"{JOBS}/{job['id']}/events", params={"after": 2})).json()
    assert [(e["seq"], e["type"]) for e in events] == [(3, "job.cancelled")]
    assert events[0]["payload"]["previous_status"] == "queued"
    assert await engine.queue.reserve(WORKER, 10, LEASE) == []  # never handed to a worker


async def test_retry_of_a_cancelled_job_queues_attempt_2(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api)
    await api.post(f"{JOBS}/{job['id']}/cancel")

    response = await api.post(f"{JOBS}/{job['id']}/retry")

    assert response.status_code == 200
    retried = response.json()
    assert (retried["status"], retried["attempt"]) == ("queued", 2)
    assert retried["completed_at"] is None
    events = (await api.get(f"{JOBS}/{job['id']}/events")).json()
    assert [e["type"] for e in events] == [
        "job.created",
        "job.queued",
        "job.cancelled",
        "job.retried",
    ]
    assert [j.id for j in await engine.queue.reserve(WORKER, 10, LEASE)] == [UUID(job["id"])]


async def test_retry_of_a_failed_job_with_no_attempts_left_queues_it_again(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api, max_attempts=1)
    await fail(engine, job["id"], error="exit 2")

    response = await api.post(f"{JOBS}/{job['id']}/retry")

    assert response.status_code == 200
    retried = response.json()
    assert (retried["status"], retried["attempt"], retried["max_attempts"]) == ("queued", 2, 2)
    assert retried["error"] is None


async def test_a_real_worker_completes_a_submitted_job(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api, type="shell", payload={"command": "echo from-the-worker"})
    worker = engine.worker()
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        current = job
        while current["status"] != "completed":
            assert current["status"] in {"queued", "running"}, current
            assert time.monotonic() < deadline, f"job not completed in 10 s: {current}"
            await asyncio.sleep(0.05)
            current = (await api.get(f"{JOBS}/{job['id']}")).json()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)

    assert "from-the-worker" in current["result"]["output_tail"]
    assert current["progress_percent"] == 100
    events = (await api.get(f"{JOBS}/{job['id']}/events")).json()
    types = [e["type"] for e in events]
    assert types[:3] == ["job.created", "job.queued", "job.started"]
    assert types[3] == "step.started"
    assert set(types[4:-2]) == {"step.output"}
    assert types[-2:] == ["step.completed", "job.completed"]
    output = "".join(e["payload"]["chunk"] for e in events if e["type"] == "step.output")
    assert "from-the-worker" in output


# -- queues -----------------------------------------------------------------------------------


async def test_queues_list_shows_the_default_queue_with_its_depth(api: httpx.AsyncClient) -> None:
    await submit(api)
    await submit(api)

    response = await api.get("/api/v1/queues")

    assert response.status_code == 200
    assert response.json() == [{"name": "default", "paused": False, "queued": 2, "running": 0}]


async def test_a_paused_queue_hands_out_no_jobs_until_resumed(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api)

    paused = await api.post("/api/v1/queues/default/pause")

    assert paused.status_code == 200
    assert paused.json() == {"name": "default", "paused": True, "queued": 1, "running": 0}
    listed = (await api.get("/api/v1/queues")).json()
    assert {q["name"]: q["paused"] for q in listed} == {"default": True}
    assert await engine.queue.reserve(WORKER, 10, LEASE) == []

    resumed = await api.post("/api/v1/queues/default/resume")

    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False
    assert [j.id for j in await engine.queue.reserve(WORKER, 10, LEASE)] == [UUID(job["id"])]


# -- health -----------------------------------------------------------------------------------


async def test_healthz_answers_ok_without_a_key(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_ready_with_the_schema_revision(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "schema": head_revision()}


async def test_readyz_is_503_and_says_to_upgrade_when_the_schema_is_behind(
    anonymous: httpx.AsyncClient, engine: Engine
) -> None:
    await downgrade(engine.db, "base")

    response = await anonymous.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert f"schema at None, expected {head_revision()}" in body["database"]
    assert "run `stitchwork db upgrade`" in body["database"]
    assert (await anonymous.get("/healthz")).status_code == 200  # alive, just not ready


async def test_reusing_an_idempotency_key_for_a_different_request_is_a_409(
    api: httpx.AsyncClient,
) -> None:
    first = await api.post(JOBS, json={"type": "noop", "idempotency_key": "release-7"})
    changed = await api.post(
        JOBS,
        json={"type": "sleep", "payload": {"seconds": 1}, "idempotency_key": "release-7"},
    )

    assert changed.status_code == 409
    assert changed.headers["content-type"] == "application/problem+json"
    body = changed.json()
    assert "already used for a different request" in body["detail"]
    assert body["errors"] == [{"field": "idempotency_key", "message": body["detail"]}]
    assert body["job_id"] == first.json()["id"]
    listed = (await api.get(JOBS)).json()["items"]
    assert [j["id"] for j in listed] == [first.json()["id"]]
