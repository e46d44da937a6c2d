"""Crash harness: plans of agent tasks and of shell nodes on a real git repository, run by a real
``stitchwork serve`` that is SIGKILLed again and again, at random moments and at the moments
that matter (fail points: while the merge lock is held, after the commit and before the merge,
after the target moved and before the state was recorded, during gates).

After each run: every task's change is on the target exactly once, every job's state and
commit match the target, no task's commit is lost, ``git fsck`` is clean, the user's checkout
is untouched and no process of any task is left running. Shell nodes log their processes, and
no two nodes whose claims overlap ever have live processes at the same time.

Long (a few minutes): ``make test-long`` runs it, ``make test`` does not (marker ``chaos``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from stitchwork.config import Settings
from stitchwork.domain.claims import overlaps
from stitchwork.domain.dag import NodeStatus
from stitchwork.domain.executions import ExecutionStatus
from stitchwork.domain.jobs import JobStatus
from stitchwork.domain.plans import parse_plan
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import job_steps, runner_jobs
from tests.contract.agent_repos import git, make_repo
from tests.e2e.conftest import eventually
from tests.e2e.test_stream_restart import _stop
from tests.sse import free_port

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(1200)]

Spawn = Callable[..., Popen[bytes]]

MIN_KILLS = 30
MAX_RUNS = 6
CRASH_ENV = {"STITCHWORK_MAX_ATTEMPTS": "100", "STITCHWORK_LOG_LEVEL": "warning"}
FAILPOINTS = ("merge.locked", "land.committed", "merge.swapped", "gate.started")
CONFIG = """
max_gate_attempts = 2

[gates.slow]
command = "sleep 0.4"
timeout = 60

[quality_rails]
agent-task = ["slow"]

[merge]
target_branch = "main"
strategy = "{strategy}"
"""
# id, claims, the file it edits, depends on
TASKS = [
    ("t1", ["src/a.py"], "src/a.py", []),
    ("t2", ["src/**"], "src/b.py", []),
    ("t3", ["src/a.py"], "src/a.py", []),
    ("t4", ["docs/guide.md"], "docs/guide.md", []),
    ("t5", ["lib/v1.2"], "lib/v1.2/x.py", []),
    ("t6", ["lib/v1.2/x.py"], "lib/v1.2/x.py", []),
    ("t7", ["notes/t7.md"], "notes/t7.md", []),
    ("t8", ["notes/t8.md"], "notes/t8.md", ["t7"]),
]
FILES = {
    "src/a.py": "a = 1\n",
    "src/b.py": "b = 1\n",
    "docs/guide.md": "# Guide\n",
    "lib/v1.2/x.py": "x = 1\n",
}


@dataclass
class Tally:
    """Kills across runs, by where the process was when it died."""

    kills: int = 0
    at: Counter[str] = field(default_factory=Counter)


def _marker(run: int, task: str) -> str:
    return f"MARK-{run}-{task}"


def _agent_plan(repo: Path, run: int) -> dict[str, Any]:
    nodes = []
    for task, claims, path, deps in TASKS:
        script = [
            {"run": "sleep 0.2"},
            {"append": path, "content": f"{_marker(run, task)}\n"},
            {"run": "sleep 0.2"},
        ]
        nodes.append(
            {
                "id": task,
                "type": "agent-task",
                "claims": claims,
                "depends_on": deps,
                "payload": {"prompt": f"task {task}", "script": script},
            }
        )
    return {"repo": str(repo), "concurrency": 3, "nodes": nodes}


def _checkout(repo: Path) -> tuple[str, str, str]:
    """What must never change in the user's checkout."""
    return (
        git(repo, "status", "--porcelain", "--untracked-files=all"),
        git(repo, "rev-parse", "HEAD"),
        (repo / "scratch.txt").read_text(),
    )


def _task_processes(work_dir: Path) -> list[int]:
    """Live processes whose working directory is inside the agents' work dir."""
    found: list[int] = []
    root = str(work_dir.resolve())
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if cwd.startswith(root) and stat[stat.rindex(")") + 2] != "Z":
            found.append(int(name))
    return found


async def _gate_running(engine: Engine) -> bool:
    async with engine.db.read() as conn:
        stmt = select(job_steps.c.id).where(
            job_steps.c.type == "gate", job_steps.c.status == "running"
        )
        return (await conn.execute(stmt.limit(1))).first() is not None


async def _answers(port: int) -> bool:
    async with httpx.AsyncClient(timeout=1) as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.TransportError:
            return False


async def _job_running(engine: Engine, proc: Popen[bytes]) -> bool:
    """Whether ``proc`` runs a job (not a job still leased to a killed predecessor)."""
    async with engine.db.read() as conn:
        stmt = select(runner_jobs.c.id).where(
            runner_jobs.c.status == "running", runner_jobs.c.lease_owner.like(f"%:{proc.pid}:%")
        )
        return (await conn.execute(stmt.limit(1))).first() is not None


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(8):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


async def _finished(engine: Engine, ex_id: uuid.UUID, ws: uuid.UUID) -> bool:
    ex = await engine.executions.get(ws, ex_id)
    return ex.status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)


async def _crash_until_done(
    spawn: Spawn,
    engine: Engine,
    ws: uuid.UUID,
    ex_id: uuid.UUID,
    rng: random.Random,
    tally: Tally,
    *,
    kills: int,
    failpoints: bool,
    busy: Callable[[Popen[bytes]], Awaitable[bool]],
) -> None:
    """Run ``serve`` and SIGKILL it (or let a fail point kill it) ``kills`` times, each a
    random moment after it got ``busy`` (running the plan's work), then let it finish the
    execution in peace."""
    port = free_port()
    for _ in range(kills):
        if await _finished(engine, ex_id, ws):
            return
        point, env = None, CRASH_ENV
        if failpoints and rng.random() < 0.7:  # else a kill from outside, at a random moment
            point = min(FAILPOINTS, key=lambda p: (tally.at[p], rng.random()))  # least hit
            env = {**CRASH_ENV, "STITCHWORK_FAILPOINTS": f"{point}=0.5"}
        proc = spawn("serve", "--port", str(port), **env)
        started = time.monotonic()
        while proc.poll() is None and not await busy(proc) and time.monotonic() - started < 30:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + rng.uniform(0.1, 2.5)
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a child
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            where = "during gates" if await _gate_running(engine) else "at random"
            proc.kill()
        else:
            where = point or f"exit {proc.returncode}"
            assert proc.returncode == -signal.SIGKILL, f"serve exited with {proc.returncode}"
        await asyncio.to_thread(proc.wait, 10)
        tally.kills += 1
        tally.at[where] += 1
    last = spawn("serve", "--port", str(port), **CRASH_ENV)
    try:
        await eventually(
            lambda: _finished(engine, ex_id, ws), timeout_s=120, what="the execution to end"
        )
        await eventually(lambda: _answers(port), timeout_s=30, what="serve to answer")
    finally:
        assert await _stop(last) == 0  # a graceful stop of a serve that is up


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite: one file shared by the test and every ``serve`` it starts."""
    return f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"


async def _open(tmp_path: Path, database_url: str) -> tuple[Engine, uuid.UUID]:
    # The first round runs here and creates the first jobs: with the same attempts as serve's.
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, max_attempts=100)
    engine = await Engine.open(settings)
    ws, _ = await engine.auth.ensure_workspace("default")
    return engine, ws.id


async def _check_agent_run(
    engine: Engine, ws: uuid.UUID, ex_id: uuid.UUID, repo: Path, run: int
) -> None:
    ex = await engine.executions.get(ws, ex_id)
    assert ex.status is ExecutionStatus.COMPLETED, [(n.node_id, n.error) for n in ex.nodes]
    landed: dict[str, str] = {}  # job id -> its commit on main
    for node in ex.nodes:
        assert node.status == NodeStatus.COMPLETED.value, (node.node_id, node.error)
        assert node.job_id is not None
        job = await engine.store.get_job(node.job_id)
        assert job.status is JobStatus.COMPLETED, (node.node_id, job.error)
        commit = (job.result or {}).get("commit")
        assert commit, f"{node.node_id} completed without a commit"
        # The recorded commit is on main and carries the job's trailer.
        git(repo, "merge-base", "--is-ancestor", commit, "main")
        assert f"Stitchwork-Job: {job.id}" in git(repo, "log", "-1", "--format=%B", commit)
        landed[str(job.id)] = commit
    # Every task's change is on main exactly once.
    for task, _, path, _ in TASKS:
        assert git(repo, "show", f"main:{path}").count(_marker(run, task)) == 1, (task, path)
    # git fsck is clean, and a task commit that no ref reaches is only an old version of a
    # change that landed (a rebase replaced it): no task's work is lost.
    fsck = await asyncio.to_thread(
        subprocess.run,
        ["git", "fsck", "--dangling"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fsck.returncode == 0, fsck.stderr
    for line in fsck.stdout.splitlines():
        kind, _, sha = line.partition(" commit ")
        if kind != "dangling":
            continue
        body = git(repo, "log", "-1", "--format=%B", sha)
        for job_id in landed:
            if f"Stitchwork-Job: {job_id}" in body:
                assert landed[job_id] != sha
                break
        else:
            assert "Stitchwork-Job:" not in body, f"lost task commit {sha}: {body}"
    assert git(repo, "branch", "--list", "stitchwork/*") == ""  # all merged, all deleted


async def test_agent_tasks_land_exactly_once_across_30_kills(
    spawn: Spawn, tmp_path: Path, database_url: str
) -> None:
    """At least 30 SIGKILLs across runs (merge and rebase strategies alternate), including
    each fail point and kills during gates."""
    rng = random.Random(12)
    tally = Tally()
    run = 0
    while run < MAX_RUNS and (
        tally.kills < MIN_KILLS or not all(tally.at[p] for p in (*FAILPOINTS, "during gates"))
    ):
        run += 1
        strategy = ("merge", "rebase")[run % 2]
        base = tmp_path / f"run{run}"
        repo = make_repo(base / "repo", FILES, config=CONFIG.replace("{strategy}", strategy))
        (repo / "scratch.txt").write_text("the user's uncommitted work\n")
        before = _checkout(repo)
        engine, ws = await _open(tmp_path, database_url)
        try:
            plan = parse_plan(json.dumps(_agent_plan(repo, run)), format="json")
            ex = await engine.executions.create(ws, plan, actor="harness", start=True)
            busy = functools.partial(_job_running, engine)
            await _crash_until_done(
                spawn, engine, ws, ex.id, rng, tally, kills=12, failpoints=True, busy=busy
            )
            await _check_agent_run(engine, ws, ex.id, repo, run)
        finally:
            await engine.close()
        assert _checkout(repo) == before  # the user's checkout is untouched
        await eventually(
            lambda: asyncio.to_thread(lambda: not _task_processes(tmp_path / "data" / "work")),
            timeout_s=10,
            what="no task process left",
        )
    print(f"crash harness: {run} runs, {tally.kills} kills: {dict(tally.at)}")
    assert tally.kills >= MIN_KILLS, tally
    for where in (*FAILPOINTS, "during gates"):
        assert tally.at[where], f"no kill {where}: {tally}"


# -- shell nodes: no two nodes with overlapping claims ever have live processes at once ---------

SHELL_NODES = [
    ("s1", ["src/**"]),
    ("s2", ["src/a.py"]),
    ("s3", ["docs"]),
    ("s4", ["lib/v1.2"]),
    ("s5", ["lib/v1.2/x.py"]),
    ("s6", ["docs/guide.md"]),
    ("s7", ["notes/one.md"]),
    ("s8", ["src/b.py"]),
]


class Sampler(threading.Thread):
    """Samples the process table: which node's ``sleep`` processes are alive, and when."""

    def __init__(self, durations: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.by_argv = {f"sleep {d} ": node for node, d in durations.items()}
        self.samples: list[tuple[float, list[tuple[str, int]]]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            alive: list[tuple[str, int]] = []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ")
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                node = self.by_argv.get(argv.decode(errors="replace"))
                if node is not None and stat[stat.rindex(")") + 2] != "Z":
                    alive.append((node, int(name)))
            self.samples.append((time.monotonic(), alive))
            time.sleep(0.01)


async def test_shell_nodes_with_overlapping_claims_never_run_at_once_across_kills(
    spawn: Spawn, tmp_path: Path, database_url: str
) -> None:
    repo = make_repo(tmp_path / "repo", FILES, config=None)
    # The nodes' directory (writable in their sandbox, which shows them nothing else of /tmp).
    shared = tmp_path / "shared"
    shared.mkdir()
    log = shared / "nodes.log"
    salt = f"{uuid.uuid4().int % 10**6:06d}"
    # Far longer than the lease (2 s) and a restart: an orphan of a killed serve would outlive
    # both and meet the re-run of its node.
    durations = {node: f"8.{i}{salt}" for i, (node, _) in enumerate(SHELL_NODES, 1)}
    nodes = [
        {
            "id": node,
            "type": "shell",
            "claims": claims,
            "payload": {
                "command": f"echo start {node} $$ >> {log}; sleep {durations[node]}; "
                f"echo end {node} $$ >> {log}",
                "cwd": str(shared),
            },
        }
        for node, claims in SHELL_NODES
    ]
    plan_data = {"repo": str(repo), "concurrency": 4, "nodes": nodes}
    sampler = Sampler(durations)
    sampler.start()
    engine, ws = await _open(tmp_path, database_url)
    tally = Tally()
    try:
        plan = parse_plan(json.dumps(plan_data), format="json")
        ex = await engine.executions.create(ws, plan, actor="harness", start=True)

        async def busy(proc: Popen[bytes]) -> bool:  # this serve runs a node's process
            alive = sampler.samples[-1][1] if sampler.samples else []
            return any(_descends_from(pid, proc.pid) for _, pid in alive)

        await _crash_until_done(
            spawn, engine, ws, ex.id, random.Random(5), tally, kills=10, failpoints=False, busy=busy
        )
        final = await engine.executions.get(ws, ex.id)
    finally:
        sampler.stopped.set()
        sampler.join(5)
        await engine.close()
    assert final.status is ExecutionStatus.COMPLETED, [(n.node_id, n.error) for n in final.nodes]
    assert tally.kills >= 5, tally  # the plan outlived several kills
    claims = dict(SHELL_NODES)
    clash = {
        (a, b)
        for a in claims
        for b in claims
        if a <= b and any(overlaps(x, y, repo_root=repo) for x in claims[a] for y in claims[b])
    }
    assert ("s4", "s5") in clash  # lib/v1.2 is a directory: it covers lib/v1.2/x.py
    seen = {node for _, alive in sampler.samples for node, _ in alive}
    assert seen == set(claims)  # the sampler saw every node's process
    for at, alive in sampler.samples:
        for i, (node, pid) in enumerate(alive):
            for other, other_pid in alive[i + 1 :]:
                pair = (min(node, other), max(node, other))
                assert pair not in clash, (
                    f"{node} (pid {pid}) and {other} (pid {other_pid}) at {at}"
                )
    ended = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("end")}
    assert ended == set(claims)  # every node ran to its end at least once
    assert not [p for _, alive in sampler.samples[-5:] for p in alive]  # nothing left running
