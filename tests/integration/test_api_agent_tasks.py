"""Agent tasks through the HTTP API: guard-rail denials are a 403 with the structured reason,
and a bad repository config is a 422 naming the key."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.contract.agent_repos import make_repo

READ_ONLY = """
[profiles.reader]
adapter = "script"
capabilities = ["repo:read"]
"""


async def test_a_guard_rail_denial_is_a_403_with_the_structured_reason(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config=READ_ONLY)
    denied = await api.post(
        "/api/v1/jobs",
        json={"type": "agent-task", "payload": {"repo": str(repo), "script": []}},
    )
    assert denied.status_code == 403, denied.text
    assert denied.headers["content-type"].startswith("application/problem+json")
    body = denied.json()
    assert body["title"] == "Guard rail denied"
    assert body["allowed"] is False
    assert body["required_capability"] == "repo:write"
    assert "profile 'reader' may not run job type 'agent-task'" in body["reason"]
    assert (await api.get("/api/v1/jobs")).json()["items"] == []


async def test_an_allowed_agent_task_is_accepted(api: httpx.AsyncClient, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    created = await api.post(
        "/api/v1/jobs",
        json={
            "type": "agent-task",
            "payload": {"repo": str(repo), "claims": ["a.txt"], "script": []},
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["payload"]["claims"] == ["a.txt"]


async def test_an_invalid_repository_config_is_a_422_naming_the_key(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config="[gates.lint]\ntimout = 5\n")
    refused = await api.post(
        "/api/v1/jobs",
        json={"type": "agent-task", "payload": {"repo": str(repo), "script": []}},
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["key"] == "gates.lint.timout"
    assert "stitchwork.toml" in body["detail"]
