"""One claim semantics through the HTTP API: a checkout's tree decides claims for executions
(jobs and pull) and holds, a refused request leaves a new repository usable, and a node's
payload cannot change what it locks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.contract.agent_repos import make_repo

SLEEPY = {"type": "sleep", "payload": {"seconds": 60}}  # stays running: nothing works the queue


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A real git repository where ``lib/v1.2`` is a directory (its name reads like a file)."""
    return make_repo(tmp_path / "repo", {"lib/v1.2/x.py": "", "README.md": ""})


def tree_plan(repo: Path) -> dict[str, Any]:
    return {
        "concurrency": 2,
        "repo": str(repo),
        "nodes": [
            {"id": "dir", "claims": ["lib/v1.2"], **SLEEPY},
            {"id": "file", "claims": ["lib/v1.2/x.py"], **SLEEPY},
        ],
    }


def node_statuses(body: dict[str, Any]) -> dict[str, str]:
    return {n["id"]: n["status"] for n in body["nodes"]}


async def test_jobs_dispatch_runs_one_of_a_dotted_directory_and_its_file(
    api: httpx.AsyncClient, checkout: Path
) -> None:
    created = await api.post(
        "/api/v1/executions", json={"plan": tree_plan(checkout), "start": True}
    )
    assert created.status_code == 201, created.text
    assert created.json()["repo"] == str(checkout)
    assert node_statuses(created.json()) == {"dir": "running", "file": "ready"}
    debug = (await api.get(f"/api/v1/executions/{created.json()['id']}/debug")).json()
    assert debug["wait_for"] == {"file": [f"{created.json()['id']}/dir"]}


async def test_pull_next_with_limit_2_hands_out_only_one_of_them(
    api: httpx.AsyncClient, checkout: Path
) -> None:
    created = await api.post(
        "/api/v1/executions",
        json={"plan": tree_plan(checkout), "dispatch": "pull", "start": True},
    )
    ex_id = created.json()["id"]
    taken = (await api.post(f"/api/v1/executions/{ex_id}/next", json={"limit": 2})).json()
    assert [n["node_id"] for n in taken["nodes"]] == ["dir"]
    assert (await api.post(f"/api/v1/executions/{ex_id}/nodes/dir/complete")).status_code == 200
    taken = (await api.post(f"/api/v1/executions/{ex_id}/next", json={"limit": 2})).json()
    assert [n["node_id"] for n in taken["nodes"]] == ["file"]


async def test_a_manual_hold_uses_the_checkouts_tree(
    api: httpx.AsyncClient, checkout: Path
) -> None:
    repo = str(checkout)
    held = await api.post(
        "/api/v1/locks", json={"name": "alice", "claims": ["lib/v1.2"], "repo": repo}
    )
    assert held.status_code == 201, held.text
    clash = await api.post(
        "/api/v1/locks", json={"name": "bob", "claims": ["lib/v1.2/x.py"], "repo": repo}
    )
    assert clash.status_code == 409
    assert "hold:alice" in clash.json()["detail"]
    elsewhere = await api.post(
        "/api/v1/locks", json={"name": "bob", "claims": ["lib/v1.2/x.py"], "repo": "by-name"}
    )
    assert elsewhere.status_code == 201  # no tree behind a plain name: lib/v1.2 is a file


async def test_a_refused_first_hold_leaves_a_new_repository_fully_usable(
    api: httpx.AsyncClient,
) -> None:
    repo = "brand-new"
    bad = await api.post("/api/v1/locks", json={"name": "eve", "claims": ["../x"], "repo": repo})
    assert bad.status_code == 422

    held = await api.post("/api/v1/locks", json={"name": "ann", "claims": ["src/"], "repo": repo})
    assert held.status_code == 201, held.text
    assert (await api.delete("/api/v1/locks/ann", params={"repo": repo})).status_code == 204
    plan = {"concurrency": 2, "nodes": [{"id": "a", "claims": ["src/"]}, {"id": "b"}]}
    jobs = await api.post("/api/v1/executions", json={"plan": plan, "repo": repo, "start": True})
    assert jobs.status_code == 201, jobs.text
    assert node_statuses(jobs.json()) == {"a": "running", "b": "running"}
    plan["nodes"][0]["claims"] = ["lib/"]  # src/ is the running job's
    pulled = await api.post(
        "/api/v1/executions",
        json={"plan": plan, "repo": repo, "dispatch": "pull", "start": True},
    )
    ex_id = pulled.json()["id"]
    taken = await api.post(f"/api/v1/executions/{ex_id}/next", json={"limit": 2})
    assert taken.status_code == 200, taken.text
    assert [n["node_id"] for n in taken.json()["nodes"]] == ["a", "b"]


OVERRIDES = [
    ({"claims": ["**"]}, "claims"),
    ({"mode": "read"}, "mode"),
    ({"repo": "/somewhere/else"}, "repo"),
]


def overriding_plan(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "repo": "/srv/shop",
        "nodes": [
            {"id": "first"},
            {"id": "edit", "type": "agent-task", "claims": ["docs/a.md"], "payload": payload},
        ],
    }


@pytest.mark.parametrize(("payload", "key"), OVERRIDES)
async def test_create_refuses_a_payload_that_overrides_the_nodes_locks(
    api: httpx.AsyncClient, payload: dict[str, Any], key: str
) -> None:
    response = await api.post("/api/v1/executions", json={"plan": overriding_plan(payload)})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == f"nodes[1].payload.{key}"
    assert f"set {key} on the" in problem["detail"] or f"put {key} on the" in problem["detail"]
    assert (await api.get("/api/v1/executions")).json()["items"] == []


@pytest.mark.parametrize(("payload", "key"), OVERRIDES)
@pytest.mark.parametrize("fmt", ["json", "yaml"])
async def test_import_refuses_a_payload_that_overrides_the_nodes_locks(
    api: httpx.AsyncClient, payload: dict[str, Any], key: str, fmt: str
) -> None:
    data = overriding_plan(payload)
    text = json.dumps(data) if fmt == "json" else yaml.safe_dump(data)
    response = await api.post(
        "/api/v1/executions/import", params={"format": fmt}, content=text.encode()
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == f"nodes[1].payload.{key}"
    assert (await api.get("/api/v1/executions")).json()["items"] == []


async def test_a_payload_repeating_the_nodes_locks_is_accepted_and_run_with_them(
    api: httpx.AsyncClient, checkout: Path
) -> None:
    payload = {"claims": ["docs/a.md"], "mode": "write", "repo": str(checkout), "script": []}
    plan = {
        "repo": str(checkout),
        "nodes": [
            {"id": "edit", "type": "agent-task", "claims": ["./docs/a.md"], "payload": payload}
        ],
    }
    created = await api.post("/api/v1/executions", json={"plan": plan, "start": True})
    assert created.status_code == 201, created.text
    [node] = created.json()["nodes"]
    job = (await api.get(f"/api/v1/jobs/{node['job_id']}")).json()
    assert job["payload"]["claims"] == ["docs/a.md"]
    assert job["payload"]["mode"] == "write"
    assert job["payload"]["repo"] == str(checkout)


async def test_an_agent_node_runs_only_in_the_repository_its_locks_are_taken_on(
    api: httpx.AsyncClient, checkout: Path
) -> None:
    payload = {"repo": str(checkout), "script": []}
    plan = {
        "repo": str(checkout),
        "nodes": [{"id": "edit", "type": "agent-task", "claims": ["a"], "payload": payload}],
    }
    # Locked under a plain name, the task would run in the checkout outside those locks.
    response = await api.post("/api/v1/executions", json={"plan": plan, "repo": "by-name"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "nodes[0].payload.repo"
    assert (await api.get("/api/v1/executions")).json()["items"] == []
