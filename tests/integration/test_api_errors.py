"""Every bad request gets a 4xx problem+json with a clear message and changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest

from stitchwork.runtime.engine import Engine
from tests.integration.conftest import ClientFactory
from tests.integration.helpers import (
    JOBS,
    assert_problem,
    complete,
    job_count,
    start,
    submit,
)

# -- bad submissions --------------------------------------------------------------------------


async def test_malformed_json_is_a_400_that_says_so(api: httpx.AsyncClient, engine: Engine) -> None:
    response = await api.post(
        JOBS, content=b'{"type": "noop",', headers={"content-type": "application/json"}
    )

    body = assert_problem(response, 400, "malformed JSON body")
    assert body["title"] == "Malformed JSON"
    assert await job_count(engine) == 0


async def test_unknown_job_type_is_a_422_that_lists_the_known_types(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post(JOBS, json={"type": "deploy-to-prod"})

    assert_problem(
        response,
        422,
        "unknown job type 'deploy-to-prod'",
        "known types: agent-review, agent-task, emit, noop, shell, sleep",
        field="type",
    )
    assert await job_count(engine) == 0


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        pytest.param(
            {"type": "noop", "priority": "high"}, "priority", "valid integer", id="priority-text"
        ),
        pytest.param(
            {"type": "noop", "priority": 5000},
            "priority",
            "less than or equal to 1000",
            id="priority-out-of-range",
        ),
        pytest.param(
            {"type": "noop", "max_attempts": 0},
            "max_attempts",
            "greater than or equal to 1",
            id="max-attempts-zero",
        ),
        pytest.param(
            {"type": "shell", "payload": {"command": 5}},
            "payload.command",
            "payload.command: Input should be a valid string",
            id="shell-command-number",
        ),
        pytest.param(
            {"type": "shell", "payload": {"command": "  "}},
            "payload.command",
            "must be a non-empty command",
            id="shell-command-blank",
        ),
        pytest.param(
            {"type": "shell", "payload": {}},
            "payload.command",
            "Field required",
            id="shell-command-missing",
        ),
        pytest.param(
            {"type": "sleep", "payload": {"seconds": 1, "colour": "red"}},
            "payload.colour",
            "Extra inputs are not permitted",
            id="payload-unknown-field",
        ),
        pytest.param(
            {"type": "noop", "payload": [1, 2]},
            "payload",
            "valid dictionary",
            id="payload-not-object",
        ),
        pytest.param(
            {"type": "noop", "colour": "red"},
            "colour",
            "Extra inputs are not permitted",
            id="unknown-top-level-field",
        ),
        pytest.param({"payload": {}}, "type", "Field required", id="type-missing"),
        pytest.param(
            {"type": "noop", "run_after": "2030-01-01T00:00:00"},
            "run_after",
            "run_after must include a timezone",
            id="run-after-naive",
        ),
        pytest.param(
            {"type": "noop", "run_after": "tomorrow"},
            "run_after",
            "valid datetime",
            id="run-after-not-a-date",
        ),
        pytest.param([{"type": "noop"}], "body", "valid dictionary", id="body-not-object"),
    ],
)
async def test_invalid_submission_is_a_422_naming_the_field_and_stores_nothing(
    api: httpx.AsyncClient, engine: Engine, body: Any, field: str, phrase: str
) -> None:
    response = await api.post(JOBS, json=body)

    assert_problem(response, 422, phrase, field=field)
    assert await job_count(engine) == 0


async def test_oversize_body_with_content_length_is_a_413_and_stores_nothing(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    limit = engine.settings.max_body_bytes
    payload = {"blob": "x" * (limit + 1)}

    response = await api.post(JOBS, json={"type": "noop", "payload": payload})

    assert int(response.request.headers["content-length"]) > limit
    body = assert_problem(response, 413, f"request body exceeds the limit of {limit} bytes")
    assert body["title"] == "Payload too large"
    assert await job_count(engine) == 0


async def test_oversize_chunked_body_without_content_length_is_a_413_and_stores_nothing(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    limit = engine.settings.max_body_bytes
    chunk = b" " * 65_536

    async def body() -> AsyncIterator[bytes]:
        yield b'{"type": "noop", "payload": {"blob": "'
        for _ in range(limit // len(chunk) + 2):
            yield chunk
        yield b'"}}'

    response = await api.post(JOBS, content=body(), headers={"content-type": "application/json"})

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, f"request body exceeds the limit of {limit} bytes")
    assert await job_count(engine) == 0


async def test_chunked_body_under_the_limit_is_accepted(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"type": "noop", '
        yield b'"payload": {"n": 1}}'

    response = await api.post(JOBS, content=body(), headers={"content-type": "application/json"})

    assert response.status_code == 201, response.text
    assert response.json()["payload"] == {"n": 1}
    assert await job_count(engine) == 1


# -- bad list queries -------------------------------------------------------------------------


async def test_invalid_status_filter_is_a_422_listing_the_statuses(api: httpx.AsyncClient) -> None:
    response = await api.get(JOBS, params={"status": "done"})

    assert_problem(response, 422, "status:", "'queued'", "'cancelled'", field="status")


async def test_invalid_cursor_is_a_422_naming_the_cursor(api: httpx.AsyncClient) -> None:
    response = await api.get(JOBS, params={"cursor": "page-2"})

    assert_problem(response, 422, "cursor is not a valid page cursor", field="cursor")


@pytest.mark.parametrize(
    ("limit", "phrase"),
    [(0, "greater than or equal to 1"), (1000, "less than or equal to 200"), ("ten", "integer")],
)
async def test_out_of_range_limit_is_a_422_naming_the_limit(
    api: httpx.AsyncClient, limit: int | str, phrase: str
) -> None:
    response = await api.get(JOBS, params={"limit": limit})

    assert_problem(response, 422, phrase, field="limit")


async def test_negative_events_after_is_a_422_naming_after(api: httpx.AsyncClient) -> None:
    job = await submit(api)

    response = await api.get(f"{JOBS}/{job['id']}/events", params={"after": -1})

    assert_problem(response, 422, "greater than or equal to 0", field="after")


# -- illegal transitions ----------------------------------------------------------------------


async def test_cancel_of_a_completed_job_is_a_409_and_changes_nothing(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api)
    await complete(engine, job["id"], {"ok": True})
    before = (await api.get(f"{JOBS}/{job['id']}")).json()
    events_before = (await api.get(f"{JOBS}/{job['id']}/events")).json()

    response = await api.post(f"{JOBS}/{job['id']}/cancel")

    body = assert_problem(
        response, 409, f"cannot move {job['id']} from 'completed' to 'cancelled'", "already ended"
    )
    assert (body["from_status"], body["to_status"]) == ("completed", "cancelled")
    after = (await api.get(f"{JOBS}/{job['id']}")).json()
    assert after == before
    assert (after["status"], after["result"]) == ("completed", {"ok": True})
    assert (await api.get(f"{JOBS}/{job['id']}/events")).json() == events_before


async def test_retry_of_a_running_job_is_a_409_saying_only_failed_or_cancelled_can_be(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api)
    await start(engine, job["id"])
    before = (await api.get(f"{JOBS}/{job['id']}")).json()

    response = await api.post(f"{JOBS}/{job['id']}/retry")

    assert_problem(response, 409, "only failed or cancelled jobs can be retried", "running")
    after = (await api.get(f"{JOBS}/{job['id']}")).json()
    assert after == before
    assert (after["status"], after["attempt"]) == ("running", 1)


async def test_retry_of_a_queued_job_is_a_409(api: httpx.AsyncClient) -> None:
    job = await submit(api)

    response = await api.post(f"{JOBS}/{job['id']}/retry")

    assert_problem(response, 409, "only failed or cancelled jobs can be retried", "queued")


async def test_cancel_twice_is_a_409_and_records_one_cancellation(api: httpx.AsyncClient) -> None:
    job = await submit(api)
    first = await api.post(f"{JOBS}/{job['id']}/cancel")

    second = await api.post(f"{JOBS}/{job['id']}/cancel")

    assert first.status_code == 200
    assert_problem(second, 409, "already ended (cancelled)")
    events = (await api.get(f"{JOBS}/{job['id']}/events")).json()
    assert [e["type"] for e in events].count("job.cancelled") == 1


# -- authentication ---------------------------------------------------------------------------

AUTH_CASES = {
    "missing": "missing API key: send 'Authorization: Bearer <key>'",
    "wrong-scheme": "unsupported Authorization scheme",
    "malformed": "malformed API key: expected sw_<prefix>_<secret>",
    "unknown-prefix": "invalid API key",
    "wrong-secret": "invalid API key",
    "revoked": "this API key was revoked",
}


async def _auth_header(case: str, engine: Engine, api_key: str) -> dict[str, str]:
    prefix = api_key.split("_")[1]
    match case:
        case "missing":
            return {}
        case "wrong-scheme":
            return {"Authorization": f"Basic {api_key}"}
        case "malformed":
            return {"Authorization": "Bearer not-a-stitchwork-key"}
        case "unknown-prefix":
            return {"Authorization": "Bearer sw_000000000000_secret"}
        case "wrong-secret":
            return {"Authorization": f"Bearer sw_{prefix}_not-the-secret"}
        case "revoked":
            await engine.auth.revoke_key(prefix)
            return {"Authorization": f"Bearer {api_key}"}
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(AUTH_CASES))
async def test_bad_credentials_are_a_401_with_a_distinct_message_and_www_authenticate(
    anonymous: httpx.AsyncClient, engine: Engine, api_key: str, case: str
) -> None:
    headers = await _auth_header(case, engine, api_key)

    response = await anonymous.post(JOBS, json={"type": "noop"}, headers=headers)

    assert_problem(response, 401, AUTH_CASES[case])
    assert response.headers["www-authenticate"] == "Bearer"
    assert api_key not in response.text
    assert await job_count(engine) == 0


async def test_the_key_prefix_alone_does_not_authenticate(
    anonymous: httpx.AsyncClient, api_key: str
) -> None:
    prefix = api_key.split("_")[1]

    response = await anonymous.get(JOBS, headers={"Authorization": f"Bearer sw_{prefix}_"})

    assert_problem(response, 401, "malformed API key")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", JOBS),
        ("GET", f"{JOBS}/01a1fd41-1ce4-7151-8adb-7bf3d859c01f"),
        ("POST", f"{JOBS}/01a1fd41-1ce4-7151-8adb-7bf3d859c01f/cancel"),
        ("GET", "/api/v1/queues"),
        ("POST", "/api/v1/queues/default/pause"),
    ],
)
async def test_every_api_route_needs_a_key(
    anonymous: httpx.AsyncClient, engine: Engine, method: str, path: str
) -> None:
    response = await anonymous.request(method, path)

    assert_problem(response, 401, "missing API key")
    assert [q.paused for q in await engine.queue.list_queues()] == [False]


# -- workspaces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("GET", "/events")],
)
async def test_another_workspaces_job_is_not_found_and_left_alone(
    api: httpx.AsyncClient,
    client_for: ClientFactory,
    engine: Engine,
    method: str,
    suffix: str,
) -> None:
    job = await submit(api)
    if suffix == "/retry":  # retryable, so only the workspace check can refuse it
        await api.post(f"{JOBS}/{job['id']}/cancel")
    before = await engine.store.get_job(UUID(job["id"]))
    events_before = await engine.store.list_events(before.id)
    other = await client_for("other")

    response = await other.request(method, f"{JOBS}/{job['id']}{suffix}")

    assert_problem(response, 404, f"job {job['id']} not found")
    assert await engine.store.get_job(before.id) == before
    assert await engine.store.list_events(before.id) == events_before


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("GET", "/events")],
)
async def test_non_uuid_job_id_is_a_422_naming_job_id(
    api: httpx.AsyncClient, method: str, suffix: str
) -> None:
    response = await api.request(method, f"{JOBS}/job-42{suffix}")

    assert_problem(response, 422, "valid UUID", field="job_id")


async def test_unknown_job_id_is_a_404(api: httpx.AsyncClient) -> None:
    missing = "01a1fd41-1ce4-7151-8adb-7bf3d859c01f"

    response = await api.get(f"{JOBS}/{missing}")

    assert_problem(response, 404, f"job {missing} not found")


# -- routing ----------------------------------------------------------------------------------


async def test_unknown_route_is_a_404_problem(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/nothing-here")

    assert_problem(response, 404, "Not Found")


async def test_wrong_method_is_a_405_problem(api: httpx.AsyncClient, engine: Engine) -> None:
    await submit(api)

    response = await api.delete(JOBS)

    assert_problem(response, 405, "Method Not Allowed")
    assert await job_count(engine) == 1


async def test_invalid_queue_name_is_a_422_naming_the_name(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    response = await api.post("/api/v1/queues/bad queue!/pause")

    assert_problem(response, 422, "name:", field="name")
    assert [q.name for q in await engine.queue.list_queues()] == ["default"]


async def test_a_valid_request_after_many_bad_ones_still_works(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    bad: list[dict[str, Any]] = [
        {"type": "nope"},
        {"type": "noop", "priority": "high"},
        {"type": "shell", "payload": {"command": 5}},
    ]
    for body in bad:
        assert (await api.post(JOBS, json=body)).status_code == 422

    job = await submit(api)

    assert await job_count(engine) == 1
    listed = (await api.get(JOBS)).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
