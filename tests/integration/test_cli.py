"""The ``stitchwork`` command line through Typer's CliRunner, on a temporary SQLite database;
plus one slow test against a real ``stitchwork serve`` process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from typer.testing import CliRunner, Result

from stitchwork.cli.main import app
from stitchwork.config import Settings
from stitchwork.domain.jobs import Job, JobStatus
from stitchwork.errors import Unauthorized
from stitchwork.runtime.engine import open_engine
from stitchwork.services.auth import Principal
from stitchwork.storage.migrate import head_revision

KEY = re.compile(r"\bsw_[0-9a-f]{12}_[A-Za-z0-9_-]+")
UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
# Variables a developer's shell may set that would point these tests elsewhere.
UNSET = [name for name in os.environ if name.startswith("STITCHWORK_")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone, for phrase assertions."""
    return " ".join(text.split())


class Cli:
    """``stitchwork`` in-process with a fixed environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env: dict[str, str | None] = {**dict.fromkeys(UNSET), "COLUMNS": "200", **env}
        self.runner = CliRunner()

    def __call__(self, *args: str, **env: str) -> Result:
        return self.runner.invoke(app, list(args), env={**self.env, **env})

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == 0, f"stitchwork {' '.join(args)}: {result.output}"
        return result.output


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def cli(data_dir: Path, database_url: str) -> Cli:
    return Cli({"STITCHWORK_DATA_DIR": str(data_dir), "STITCHWORK_DATABASE_URL": database_url})


def authenticate(database_url: str, key: str) -> Principal:
    """Check a key against the CLI's database with an Engine of our own."""

    async def check() -> Principal:
        async with open_engine(Settings(database_url=database_url)) as engine:
            return await engine.auth.authenticate(key)

    return asyncio.run(check())


# -- db ---------------------------------------------------------------------------------------


def test_db_current_before_upgrade_fails_saying_the_schema_is_behind(cli: Cli) -> None:
    result = cli("db", "current")

    assert result.exit_code == 1
    assert f"schema at revision none, newest is {head_revision()}" in flat(result.output)
    assert "stitchwork db upgrade" in flat(result.output)


def test_db_upgrade_then_db_current_says_up_to_date(cli: Cli, database_url: str) -> None:
    upgraded = flat(cli.ok("db", "upgrade"))
    current = flat(cli.ok("db", "current"))
    again = flat(cli.ok("db", "upgrade"))  # safe to repeat

    assert f"schema at revision {head_revision()} ({database_url})" in upgraded
    assert f"revision {head_revision()}: up to date" in current
    assert f"schema at revision {head_revision()}" in again


# -- keys -------------------------------------------------------------------------------------


def test_keys_create_prints_a_key_that_authenticates(cli: Cli, database_url: str) -> None:
    output = cli.ok("keys", "create", "ci")

    match = KEY.search(output)
    assert match, output
    key = match.group(0)
    prefix = key.split("_")[1]
    assert f"created key {prefix} (ci, workspace default, role reader)" in flat(output)
    principal = authenticate(database_url, key)
    assert principal.key_name == "ci"
    assert principal.actor == "key:ci"
    assert principal.role == "reader"  # least privilege unless asked
    assert principal.scopes == frozenset()


def test_keys_create_with_a_role_and_scopes_grants_them_and_keys_list_shows_them(
    cli: Cli, database_url: str
) -> None:
    output = cli.ok(
        "keys", "create", "deploy", "--role", "operator", "--scope", "jobs:submit:shell"
    )
    key = KEY.search(output)
    assert key, output
    prefix = key.group(0).split("_")[1]
    assert "role operator, scopes jobs:submit:shell" in flat(output)

    principal = authenticate(database_url, key.group(0))
    assert (principal.role, principal.scopes) == ("operator", frozenset({"jobs:submit:shell"}))
    assert principal.allows("jobs:submit:shell")

    row = next(line for line in cli.ok("keys", "list").splitlines() if prefix in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[:5] == [prefix, "deploy", "default", "operator", "jobs:submit:shell"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "root"], "unknown role 'root'; roles: admin, operator, reader"),
        (["--scope", "jobs:delete"], "unknown scope 'jobs:delete'"),
        (["--scope", "jobs:submit:rm-rf"], "unknown job type 'rm-rf' in scope"),
    ],
)
def test_keys_create_with_an_unknown_role_or_scope_exits_2_and_creates_nothing(
    cli: Cli, args: list[str], message: str
) -> None:
    result = cli("keys", "create", "ci", *args)

    assert result.exit_code == 2, result.output
    assert message in flat(result.output)
    assert KEY.search(result.output) is None
    assert "ci" not in cli.ok("keys", "list")


def test_keys_list_shows_the_prefix_but_never_the_secret(cli: Cli) -> None:
    key = KEY.search(cli.ok("keys", "create", "ci"))
    assert key
    prefix = key.group(0).split("_")[1]

    output = cli.ok("keys", "list")

    row = next(line for line in output.splitlines() if prefix in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[:3] == [prefix, "ci", "default"]
    assert cells[-1] == "active"
    assert key.group(0) not in output


def test_keys_revoke_makes_the_key_fail_to_authenticate(cli: Cli, database_url: str) -> None:
    key = KEY.search(cli.ok("keys", "create", "ci"))
    assert key
    prefix = key.group(0).split("_")[1]

    output = cli.ok("keys", "revoke", prefix)

    assert f"revoked key {prefix}" in output
    with pytest.raises(Unauthorized, match="revoked"):
        authenticate(database_url, key.group(0))
    listed = next(line for line in cli.ok("keys", "list").splitlines() if prefix in line)
    assert "revoked" in listed


def test_keys_revoke_accepts_the_whole_key(cli: Cli, database_url: str) -> None:
    key = KEY.search(cli.ok("keys", "create", "ci"))
    assert key

    cli.ok("keys", "revoke", key.group(0))

    with pytest.raises(Unauthorized, match="revoked"):
        authenticate(database_url, key.group(0))


def test_keys_revoke_of_an_unknown_prefix_exits_1_and_says_so(cli: Cli) -> None:
    result = cli("keys", "revoke", "0123456789ab")

    assert result.exit_code == 1
    assert "error: no active key with prefix '0123456789ab'" in flat(result.output)


def test_keys_create_in_another_workspace_scopes_the_key_to_it(cli: Cli, database_url: str) -> None:
    default = KEY.search(cli.ok("keys", "create", "alice"))
    other = KEY.search(cli.ok("keys", "create", "bob", "--workspace", "team-b"))
    assert default
    assert other

    alice = authenticate(database_url, default.group(0))
    bob = authenticate(database_url, other.group(0))

    assert alice.workspace_id != bob.workspace_id
    assert "team-b" in cli.ok("keys", "list")


# -- configuration and client errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("STITCHWORK_WORKER_CONCURRENCY", "0", "STITCHWORK_WORKER_CONCURRENCY"),
        ("STITCHWORK_API_PORT", "70000", "STITCHWORK_API_PORT"),
        ("STITCHWORK_MAX_BODY_BYTES", "ten", "STITCHWORK_MAX_BODY_BYTES"),
    ],
)
def test_invalid_configuration_exits_2_naming_the_setting(
    cli: Cli, variable: str, value: str, setting: str
) -> None:
    result = cli("db", "current", **{variable: value})

    assert result.exit_code == 2
    assert f"error: invalid configuration: {setting}:" in flat(result.output)


def test_jobs_list_without_a_server_exits_1_saying_it_cannot_reach_it(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = cli("jobs", "list", STITCHWORK_API_URL=url, STITCHWORK_API_KEY="sw_abc_def")

    assert result.exit_code == 1
    assert f"cannot reach stitchwork at {url}" in flat(result.output)
    assert "stitchwork serve" in flat(result.output)


def test_jobs_list_without_any_key_exits_1_saying_how_to_get_one(cli: Cli, data_dir: Path) -> None:
    result = cli("jobs", "list")

    assert result.exit_code == 1
    output = flat(result.output)
    assert "no API key" in output
    assert str(data_dir / "credentials.json") in output
    assert "STITCHWORK_API_KEY" in output


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{seconds: 2}", "--payload is not valid JSON"),
        ("[2]", "--payload must be a JSON object"),
    ],
)
def test_jobs_submit_with_a_bad_payload_exits_2_before_calling_the_api(
    cli: Cli, payload: str, message: str
) -> None:
    # An unreachable URL: reaching it would exit 1, not 2.
    url = f"http://127.0.0.1:{free_port()}"

    result = cli(
        "jobs", "submit", "sleep", "--payload", payload,
        STITCHWORK_API_URL=url, STITCHWORK_API_KEY="sw_abc_def",
    )  # fmt: skip

    assert result.exit_code == 2
    assert message in flat(result.output)


# -- against a real server ----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``stitchwork serve`` in a subprocess on a free port, with its own data dir; yields the
    process, its data dir and its log file. Killed at teardown if still running."""
    data_dir = tmp_path / "served"
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STITCHWORK_")}
    env.update(
        STITCHWORK_DATA_DIR=str(data_dir),
        # The retried 30 s sleep job is still running at SIGTERM: give it 1 s, then release it.
        STITCHWORK_SHUTDOWN_GRACE="PT1S",
        STITCHWORK_LOG_LEVEL="info",
    )
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stitchwork.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, data_dir, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_for(probe: Callable[[], bool], what: str, timeout: float, log: Path) -> None:
    """Poll ``probe`` until true; on timeout fail with the server's log."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}:\n{log.read_text()}"
            )
        time.sleep(0.05)


def submitted_id(output: str) -> str:
    match = re.search(rf"submitted \w+ job ({UUID_RE.pattern}) \(queued\)", output)
    assert match, output
    return match.group(1)


@pytest.mark.slow
def test_cli_drives_a_real_server_and_sigterm_stops_it_cleanly(
    server: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, data_dir, log = server
    credentials = data_dir / "credentials.json"

    def ready() -> bool:
        assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
        if not credentials.exists():
            return False
        url = json.loads(credentials.read_text())["api_url"]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, "the server to listen and write its credentials", 20, log)
    creds = json.loads(credentials.read_text())
    assert KEY.fullmatch(creds["api_key"])
    assert creds["workspace"] == "default"
    http = httpx.Client(
        base_url=f"{creds['api_url']}/api/v1",
        headers={"Authorization": f"Bearer {creds['api_key']}"},
    )
    cli = Cli({"STITCHWORK_DATA_DIR": str(data_dir)})  # the key comes from credentials.json

    watched = cli("jobs", "submit", "shell", "-c", "echo hi", "--watch")

    assert watched.exit_code == 0, watched.output
    shell_id = submitted_id(watched.output)
    assert f"job {shell_id} completed" in watched.output
    lines = [line.rstrip() for line in watched.output.splitlines()]
    assert any(line.startswith("✓ $ echo hi") for line in lines)  # the completed step
    assert "  hi" in lines  # and its output, streamed over SSE

    listed = cli.ok("jobs", "list")
    row = next(line for line in listed.splitlines() if shell_id in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[:4] == [shell_id, "shell", "completed", "1/3"]

    shown = cli.ok("jobs", "show", shell_id)
    assert re.search(r"status\s+completed", shown)
    assert all(t in shown for t in ("job.created", "job.queued", "job.started", "job.completed"))

    sleep_id = submitted_id(cli.ok("jobs", "submit", "sleep", "-p", '{"seconds": 30}'))
    cancelled = cli.ok("jobs", "cancel", sleep_id)
    assert f"job {sleep_id} is cancelled" in cancelled
    assert http.get(f"/jobs/{sleep_id}").json()["status"] == "cancelled"

    retried = cli.ok("jobs", "retry", sleep_id)
    assert f"job {sleep_id} is queued (attempt 2)" in retried
    wait_for(
        lambda: http.get(f"/jobs/{sleep_id}").json()["status"] == "running",
        "the retried job to start",
        10,
        log,
    )

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within 15 s of SIGTERM:\n{log.read_text()}")
    assert code == 0, log.read_text()

    released = asyncio.run(_job_and_events(data_dir, UUID(sleep_id)))
    job, events = released
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 2)
    assert events[-1] == "job.requeued"


async def _job_and_events(data_dir: Path, job_id: UUID) -> tuple[Job, list[str]]:
    async with open_engine(Settings(data_dir=data_dir)) as engine:
        job = await engine.store.get_job(job_id)
        return job, [e.type for e in await engine.store.list_events(job_id)]
