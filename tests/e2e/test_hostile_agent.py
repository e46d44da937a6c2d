"""A hostile agent on a real ``stitchwork serve``, confined by the real sandbox (bubblewrap).

The agent profile runs a script that tries everything an agent should never be able to do:
read ``credentials.json``, the database and another repository; write outside its worktree (the
server's home, the host's ``/tmp``, the user's checkout, the repository's branches); kill the
server and another task's processes; reach the network with ``network = false``; read the
server's secrets from its environment; and print a secret into its output. Every attempt must
fail, nothing outside its worktree may change, the task must fail (its claims gate), and no
secret may appear in any event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest

from stitchwork.runner.sandbox import Sandbox
from tests.conftest import IN_CI
from tests.contract.agent_repos import git, make_repo
from tests.contract.helpers import marked_pids
from tests.e2e.conftest import eventually
from tests.e2e.test_stream_restart import _ready, _stop
from tests.sse import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

Spawn = Callable[..., Popen[bytes]]

MATTERMOST_TOKEN = "mm-token-8a1f3c77d2e94b05"  # a server secret, configured by the operator
ENV_SECRET = "server-env-secret-51c0e2"  # a variable of the server's own environment
FAKE_KEY = "sw_0123456789ab_" + "A" * 43  # shaped like an API key

HOSTILE = """\
#!/bin/sh
# Each attempt prints LEAKED <what> if it got through, BLOCKED <what> if not.
try() {{
  what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "LEAKED $what"; else echo "BLOCKED $what"; fi
}}
has() {{ grep -q "$1" "$2"; }}
try credentials has api_key {data}/credentials.json
try database has SQLite {db}
try other-repo has other-secret {other}/secret.txt
try write-home sh -c 'echo pwned > {home}/pwned'
try write-checkout sh -c 'echo pwned >> {repo}/README.md'
try write-data-dir sh -c 'echo pwned > {data}/pwned'
try move-main git update-ref refs/heads/main HEAD
try new-branch git branch evil
try write-git-config git config core.hooksPath /tmp
try kill-server kill -9 {server}
try kill-other-task kill -9 {other_task}
try network python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}), 3)"
try env-secret sh -c 'env | grep -q -e {env_secret} -e STITCHWORK_'
echo "host tmp" > /tmp/hostile-{marker}
echo "printing what it found: {token} {key}"
echo "done" > outside-claims.txt
"""

CONFIG = """
max_gate_attempts = 1

[profiles.hostile]
command = "sh hostile.sh"
capabilities = ["repo:read", "repo:write", "git:commit", "git:merge", "shell:exec"]
network = false
"""


def _tree(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (directories as empty entries),
    less the top-level entries in ``skip``."""
    if not root.exists():
        return {}
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = ""
        for name in filenames:
            path = Path(dirpath, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _outside(repo: Path, home: Path, other: Path, data: Path) -> dict[str, Any]:
    """What no task may change: the server's home, another repository, the user's checkout
    (its files, its branches, its git config and hooks) and the data dir (less the database
    and the work dir, which the server itself changes)."""
    refs = git(repo, "for-each-ref").splitlines()
    return {
        "home": _tree(home),
        "other": _tree(other),
        "checkout": _tree(repo, skip=(".git",)),
        "branches": [r for r in refs if "refs/heads/stitchwork/" not in r],
        "git": _tree(repo / ".git" / "hooks") | {"config": (repo / ".git/config").read_text()},
        "data": _tree(data, skip=("work", "e2e.db", "e2e.db-wal", "e2e.db-shm")),
    }


async def test_a_hostile_agent_is_confined_and_no_secret_reaches_the_event_log(
    spawn: Spawn, tmp_path: Path, database_url: str
) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "notes.txt").write_text("the operator's files\n")
    other = make_repo(tmp_path / "other", {"secret.txt": "other-secret\n"})
    port = free_port()
    env = {
        "HOME": str(home),
        "STITCHWORK_MATTERMOST_TOKEN": MATTERMOST_TOKEN,
        "SERVER_SECRET": ENV_SECRET,
        "STITCHWORK_REPO_ROOTS": json.dumps([str(tmp_path)]),
    }
    server = spawn("serve", "--port", str(port), **env)
    key = await _ready(f"http://127.0.0.1:{port}", server, data)
    db = database_url.removeprefix("sqlite+aiosqlite:///")
    marker = uuid.uuid4().hex[:12]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/api/v1",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as api:
        # Another task's process, which the agent will try to kill.
        sleeper = f"300.{uuid.uuid4().int % 10**6:06d}"
        other_job = (
            await api.post(
                "/jobs", json={"type": "shell", "payload": {"command": f"sleep {sleeper}"}}
            )
        ).json()

        async def sleeping() -> list[int]:
            return await asyncio.to_thread(marked_pids, sleeper)

        other_pid = (await eventually(sleeping, timeout_s=30, what="the other task"))[0]
        repo = make_repo(
            tmp_path / "repo",
            {
                "README.md": "the user's project\n",
                "hostile.sh": HOSTILE.format(
                    data=data,
                    db=db,
                    other=other,
                    home=home,
                    repo=tmp_path / "repo",
                    server=server.pid,
                    other_task=other_pid,
                    port=port,
                    env_secret=ENV_SECRET,
                    marker=marker,
                    token=MATTERMOST_TOKEN,
                    key=FAKE_KEY,
                ),
            },
            config=CONFIG,
        )
        before = _outside(repo, home, other, data)
        submitted = await api.post(
            "/jobs",
            json={
                "type": "agent-task",
                "payload": {
                    "repo": str(repo),
                    "profile": "hostile",
                    "claims": ["hostile.sh"],
                    "prompt": "be hostile",
                },
                "max_attempts": 1,
            },
        )
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]

        async def ended() -> dict[str, Any] | None:
            job: dict[str, Any] = (await api.get(f"/jobs/{job_id}")).json()
            return job if job["status"] in {"completed", "failed", "cancelled"} else None

        job = await eventually(ended, timeout_s=120, what="the hostile task to end")
        events = (await api.get(f"/jobs/{job_id}/events?limit=1000")).json()
        other_state = (await api.get(f"/jobs/{other_job['id']}")).json()["status"]
        await api.post(f"/jobs/{other_job['id']}/cancel")

    output = "".join(e["payload"].get("chunk", "") for e in events)
    attempts = [line for line in output.splitlines() if line.startswith(("LEAKED", "BLOCKED"))]
    assert len(attempts) == 13, output
    assert [a for a in attempts if a.startswith("LEAKED")] == [], output
    # The task failed: it changed a path outside its claims.
    assert job["status"] == "failed"
    assert "claims" in (job["error"] or ""), job["error"]
    # Nothing outside its worktree changed.
    assert _outside(repo, home, other, data) == before
    # The sandbox's /tmp was its own.
    assert not await asyncio.to_thread(os.path.exists, f"/tmp/hostile-{marker}")
    assert server.poll() is None  # still serving
    assert other_state == "running"  # the other task survived
    # No secret in any event of the job (the worker redacted what the agent printed).
    text = json.dumps(events)
    for secret in (MATTERMOST_TOKEN, ENV_SECRET, FAKE_KEY, key):
        assert secret not in text
    assert "[redacted]" in output
    await _stop(server)


async def test_sandbox_off_is_logged_at_start_and_shown_by_health(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    server = spawn("serve", "--port", str(port), STITCHWORK_SANDBOX="off")
    await _ready(f"http://127.0.0.1:{port}", server, tmp_path / "data")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        health = (await client.get("/api/v1/health")).json()
    assert health["sandbox"] == "off"
    assert await _stop(server) == 0
    log = (tmp_path / "proc-0.log").read_text()
    assert "sandbox_off" in log
    assert "sandbox off" in log  # the start line says so too


@pytest.fixture(autouse=True)
def _bubblewrap() -> None:
    """These tests need a working bubblewrap: skipped without one, except in CI, which
    installs it (``.ci/run``), so CI always runs them confined."""
    problem = Sandbox("auto").problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"CI must provide bubblewrap: {problem}")
        pytest.skip(problem)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite: the hostile agent tries to read the database file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}"
