"""A job's steps and filtered events over the HTTP API (ASGI), on SQLite and Postgres."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from stitchwork.domain.jobs import JobStatus
from stitchwork.domain.steps import Step, StepPhase, StepStatus, StepType
from stitchwork.runtime.engine import Engine
from tests.contract.helpers import running_worker, wait_for_status
from tests.integration.conftest import ClientFactory
from tests.integration.helpers import JOBS, WORKER, assert_problem, start, submit

STEP_FIELDS = {
    "id",
    "job_id",
    "ordinal",
    "name",
    "phase",
    "type",
    "status",
    "attempt",
    "output_tail",
    "error",
    "tokens_input",
    "tokens_output",
    "duration_s",
    "created_at",
    "started_at",
    "completed_at",
}


async def _job_with_steps(api: httpx.AsyncClient, engine: Engine) -> tuple[str, list[Step]]:
    """A running job with a completed ``build`` step (with output) and a running ``test``
    step, written through the step store as the worker would."""
    job = await submit(api)
    await start(engine, job["id"])
    job_id = uuid.UUID(job["id"])
    build = await engine.steps.add_step(
        job_id, WORKER, name="build", phase=StepPhase.SETUP, type_=StepType.COMMAND
    )
    await engine.steps.append_outputs(build.id, WORKER, ["compiling\n", "linking\n"])
    build = await engine.steps.finish_step(build.id, WORKER, StepStatus.COMPLETED)
    test = await engine.steps.add_step(
        job_id, WORKER, name="test", phase=StepPhase.VALIDATION, type_=StepType.COMMAND
    )
    return job["id"], [build, test]


# -- steps -------------------------------------------------------------------------------------


async def test_queued_job_has_an_empty_steps_list(api: httpx.AsyncClient) -> None:
    job = await submit(api)
    response = await api.get(f"{JOBS}/{job['id']}")
    assert response.status_code == 200
    assert response.json()["steps"] == []
    assert (await api.get(f"{JOBS}/{job['id']}/steps")).json() == []


async def test_job_run_by_a_real_worker_shows_its_shell_step(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job = await submit(api, type="shell", payload={"command": "echo hi"})
    async with running_worker(engine):
        await wait_for_status(engine, uuid.UUID(job["id"]), JobStatus.COMPLETED, JobStatus.FAILED)

    detail = (await api.get(f"{JOBS}/{job['id']}")).json()
    assert detail["status"] == "completed"
    (step,) = detail["steps"]
    assert set(step) == STEP_FIELDS
    assert {k: step[k] for k in ("job_id", "ordinal", "name", "phase", "type", "status")} == {
        "job_id": job["id"],
        "ordinal": 1,
        "name": "$ echo hi",
        "phase": "execution",
        "type": "command",
        "status": "completed",
    }
    assert (step["output_tail"], step["error"], step["attempt"]) == ("hi\n", None, 1)
    assert isinstance(step["duration_s"], float)
    assert 0 <= step["duration_s"] < 5
    assert step["started_at"] is not None
    assert step["completed_at"] is not None

    assert (await api.get(f"{JOBS}/{job['id']}/steps")).json() == [step]
    assert (await api.get(f"{JOBS}/{job['id']}/steps/{step['id']}")).json() == step


async def test_steps_endpoint_lists_steps_in_order_with_their_state(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job_id, (build, _) = await _job_with_steps(api, engine)

    response = await api.get(f"{JOBS}/{job_id}/steps")
    assert response.status_code == 200
    steps = response.json()
    assert [(s["ordinal"], s["name"], s["phase"], s["status"]) for s in steps] == [
        (1, "build", "setup", "completed"),
        (2, "test", "validation", "running"),
    ]
    assert steps[0]["id"] == str(build.id)
    assert steps[0]["output_tail"] == "compiling\nlinking\n"
    assert steps[0]["duration_s"] == build.duration_s
    assert (steps[1]["duration_s"], steps[1]["completed_at"]) == (None, None)
    assert (await api.get(f"{JOBS}/{job_id}")).json()["steps"] == steps


async def test_one_step_by_id(api: httpx.AsyncClient, engine: Engine) -> None:
    job_id, (_, test) = await _job_with_steps(api, engine)
    response = await api.get(f"{JOBS}/{job_id}/steps/{test.id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert (body["id"], body["name"], body["status"]) == (str(test.id), "test", "running")


async def test_unknown_step_id_is_a_404_problem(api: httpx.AsyncClient, engine: Engine) -> None:
    job_id, _ = await _job_with_steps(api, engine)
    missing = uuid.uuid4()
    response = await api.get(f"{JOBS}/{job_id}/steps/{missing}")
    assert_problem(response, 404, str(missing))


async def test_step_of_another_job_is_a_404_problem(api: httpx.AsyncClient, engine: Engine) -> None:
    _, (build, _) = await _job_with_steps(api, engine)
    other = await submit(api)
    response = await api.get(f"{JOBS}/{other['id']}/steps/{build.id}")
    assert_problem(response, 404, str(build.id))


async def test_steps_of_another_workspaces_job_are_a_404_problem(
    api: httpx.AsyncClient, engine: Engine, client_for: ClientFactory
) -> None:
    job_id, (build, _) = await _job_with_steps(api, engine)
    stranger = await client_for("other")

    for path in (f"{JOBS}/{job_id}", f"{JOBS}/{job_id}/steps", f"{JOBS}/{job_id}/steps/{build.id}"):
        assert_problem(await stranger.get(path), 404, job_id)


async def test_non_uuid_step_id_is_a_422_naming_step_id(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job_id, _ = await _job_with_steps(api, engine)
    response = await api.get(f"{JOBS}/{job_id}/steps/not-a-step")
    assert_problem(response, 422, "valid UUID", field="step_id")


# -- filtered events ---------------------------------------------------------------------------


async def test_events_filtered_by_type_glob_and_paged_with_limit_and_after(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job_id, (build, test) = await _job_with_steps(api, engine)
    url = f"{JOBS}/{job_id}/events"

    first = await api.get(url, params={"type": "step.*", "limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [(e["seq"], e["type"], e["step_id"]) for e in page] == [
        (4, "step.started", str(build.id)),
        (5, "step.output", str(build.id)),
    ]
    assert page[1]["payload"]["chunk"] == "compiling\n"

    rest = (await api.get(url, params={"type": "step.*", "after": page[-1]["seq"]})).json()
    assert [(e["seq"], e["type"]) for e in rest] == [
        (6, "step.output"),
        (7, "step.completed"),
        (8, "step.started"),
    ]
    assert rest[-1]["step_id"] == str(test.id)


async def test_events_type_filter_is_repeatable_and_exact_without_wildcards(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    job_id, _ = await _job_with_steps(api, engine)
    response = await api.get(
        f"{JOBS}/{job_id}/events", params=[("type", "job.started"), ("type", "step.completed")]
    )
    assert [(e["seq"], e["type"]) for e in response.json()] == [
        (3, "job.started"),
        (7, "step.completed"),
    ]
    none = await api.get(f"{JOBS}/{job_id}/events", params={"type": "step"})
    assert none.json() == []


async def test_events_after_the_last_seq_are_empty(api: httpx.AsyncClient, engine: Engine) -> None:
    job_id, _ = await _job_with_steps(api, engine)
    url = f"{JOBS}/{job_id}/events"
    everything = (await api.get(url)).json()
    assert [e["seq"] for e in everything] == list(range(1, 9))
    assert (await api.get(url, params={"after": 8})).json() == []
    assert [e["seq"] for e in (await api.get(url, params={"after": 6})).json()] == [7, 8]
