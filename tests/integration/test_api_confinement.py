"""Jobs whose commands could not be confined are refused on submission, with nothing stored:
a repository or directory outside the repository roots (403, the same answer whether the path
exists or not) and, with the sandbox on, no working bubblewrap (503, saying what to do)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from stitchwork.runner.sandbox import JobConfinement, Sandbox
from stitchwork.runtime.engine import Engine
from tests.contract.agent_repos import make_repo


@pytest.fixture
def roots(engine: Engine, tmp_path: Path) -> Path:
    """This test's repository root: ``tmp_path/src`` only."""
    root = tmp_path / "src"
    root.mkdir()
    engine.jobs.confinement = JobConfinement(engine.confinement.sandbox, repo_roots=(root,))
    return root


async def _nothing_stored(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/jobs")).json()["items"] == []


async def test_a_repository_outside_the_roots_is_a_403_that_does_not_say_if_it_exists(
    api: httpx.AsyncClient, roots: Path, tmp_path: Path
) -> None:
    inside = make_repo(roots / "app", {"a.txt": "a\n"})
    outside = make_repo(tmp_path / "other", {"a.txt": "a\n"})
    bodies = []
    for repo in (outside, tmp_path / "nothing-here", roots / ".." / "other"):
        refused = await api.post(
            "/api/v1/jobs",
            json={"type": "agent-task", "payload": {"repo": str(repo), "script": []}},
        )
        assert refused.status_code == 403, refused.text
        body = refused.json()
        assert body["errors"][0]["field"] == "payload.repo"
        assert "STITCHWORK_REPO_ROOTS" in body["detail"]
        bodies.append({k: v for k, v in body.items() if k != "instance"})
    assert bodies[0] == bodies[1] == bodies[2]
    await _nothing_stored(api)
    accepted = await api.post(
        "/api/v1/jobs",
        json={"type": "agent-task", "payload": {"repo": str(inside), "script": []}},
    )
    assert accepted.status_code == 201, accepted.text


async def test_a_shell_jobs_directory_must_be_inside_the_roots(
    api: httpx.AsyncClient, roots: Path
) -> None:
    refused = await api.post(
        "/api/v1/jobs", json={"type": "shell", "payload": {"command": "ls", "cwd": "/etc"}}
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["errors"][0]["field"] == "payload.cwd"
    await _nothing_stored(api)


async def test_a_shell_job_may_not_set_the_servers_own_variables(api: httpx.AsyncClient) -> None:
    refused = await api.post(
        "/api/v1/jobs",
        json={"type": "shell", "payload": {"command": "env", "env": {"STITCHWORK_X": "1"}}},
    )
    assert refused.status_code == 422, refused.text
    assert "reserved" in refused.text
    await _nothing_stored(api)


async def test_without_bubblewrap_jobs_are_refused_with_what_to_do(
    api: httpx.AsyncClient, engine: Engine, tmp_path: Path
) -> None:
    engine.jobs.confinement = JobConfinement(
        Sandbox("auto", bwrap="/nonexistent/bwrap"), repo_roots=(tmp_path,)
    )
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    for job in (
        {"type": "agent-task", "payload": {"repo": str(repo), "script": []}},
        {"type": "shell", "payload": {"command": "true"}},
    ):
        refused = await api.post("/api/v1/jobs", json=job)
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "apt-get install bubblewrap" in detail
        assert "STITCHWORK_SANDBOX=off" in detail
    await _nothing_stored(api)
    # Jobs that start no command are not affected.
    assert (await api.post("/api/v1/jobs", json={"type": "noop"})).status_code == 201
