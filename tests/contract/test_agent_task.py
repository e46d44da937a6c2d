"""The ``agent-task`` job type end to end on real git repositories, through a real worker:
worktree, script agent, gates with forced continuation, the claims gate, merge, conflicts,
cancellation and guard rails."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.domain.steps import StepPhase, StepStatus, StepType
from stitchwork.errors import GuardRailDenied, InvalidRequest
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.agent_repos import git, human_commit, log, make_repo, show
from tests.contract.helpers import marked_pids, running_worker, wait_for_status, wait_until

ACTOR = "test"
DONE = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@pytest.fixture
async def engine(sqlite_backend: Backend) -> AsyncIterator[Engine]:
    eng = await sqlite_backend.open_engine()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def ws(engine: Engine) -> uuid.UUID:
    workspace, _ = await engine.auth.ensure_workspace("default")
    return workspace.id


async def submit(engine: Engine, ws: uuid.UUID, repo: Path, **payload: Any) -> Job:
    new = NewJob("agent-task", {"repo": str(repo), **payload}, max_attempts=1)
    return (await engine.jobs.submit(ws, new, actor=ACTOR)).job


async def run_task(engine: Engine, ws: uuid.UUID, repo: Path, **payload: Any) -> Job:
    job = await submit(engine, ws, repo, **payload)
    async with running_worker(engine):
        return await wait_for_status(engine, job.id, *DONE, timeout=30)


async def events(engine: Engine, job: Job, *types: str) -> list[dict[str, Any]]:
    return [e.payload for e in await engine.store.list_events(job.id, types=types, limit=10_000)]


async def wait_for_agent(engine: Engine, job: Job) -> None:
    """Until the task's agent step (its second step) has started."""

    async def started() -> bool:
        return len(await events(engine, job, EventType.STEP_STARTED.value)) >= 2

    await wait_until(started, what="the agent step to start", timeout=15)


def wait_for(name: str) -> dict[str, str]:
    """A script action that waits (at most 60 s) until the test creates the file ``name`` in
    the repository's ``.git`` (``go(repo, name)``): the one place outside its worktree that
    the agent's sandbox shows it, read-only."""
    probe = f'[ -e "$(git rev-parse --git-common-dir)/{name}" ]'
    return {"run": f"for i in $(seq 600); do {probe} && exit 0; sleep 0.1; done; exit 1"}


def go(repo: Path, name: str) -> None:
    """Let a script that ``wait_for(name)`` go on."""
    (repo / ".git" / name).touch()


def worktrees_dir(engine: Engine) -> Path:
    return engine.settings.agent_work_dir


async def test_a_task_runs_in_its_worktree_passes_its_gates_and_is_merged(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"docs/hello.txt": "hello\n", "src/app.py": "x = 1\n"})
    (repo / "scratch.txt").write_text("the user's uncommitted work\n")
    before = git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD")
    job = await run_task(
        engine,
        ws,
        repo,
        prompt="Greet the reader\n\nAdd a greeting to the docs.",
        claims=["docs/**"],
        script=[
            {"write": "docs/greeting.txt", "content": "welcome\n"},
            {"append": "docs/hello.txt", "content": "again\n"},
            {"tokens": [120, 30]},
        ],
        issue_ref="acme/app#7",
    )
    assert job.status is JobStatus.COMPLETED, job.error
    result = job.result or {}
    assert result["merged"] is True
    assert (result["attempts"], result["rejections"]) == (1, 0)
    assert [g["gate"] for g in result["gates"]] == ["claims", "no-todo"]
    assert all(g["passed"] for g in result["gates"])
    assert sorted(result["changed"]) == ["docs/greeting.txt", "docs/hello.txt"]
    # main has the task's commit, merged; the user's checkout is exactly as it was.
    assert show(repo, "main", "docs/greeting.txt") == "welcome"
    subjects = log(repo)
    assert subjects[0].startswith("Merge stitchwork/")
    assert "Greet the reader" in subjects
    body = git(repo, "log", "-1", "--format=%B", "main^2")
    assert f"Stitchwork-Job: {job.id}" in body
    assert "Stitchwork-Issue: acme/app#7" in body
    assert (git(repo, "status", "--porcelain"), git(repo, "rev-parse", "HEAD")) == before
    assert not any(p.name == str(job.id) for p in worktrees_dir(engine).rglob(str(job.id)))
    # The steps tell the story, phase by phase.
    steps = await engine.jobs.steps(ws, job.id)
    assert [(s.phase, s.type) for s in steps] == [
        (StepPhase.SETUP, StepType.COMMAND),
        (StepPhase.EXECUTION, StepType.AI_ACTION),
        (StepPhase.VALIDATION, StepType.GATE),
        (StepPhase.VALIDATION, StepType.GATE),
        (StepPhase.CLEANUP, StepType.COMMAND),
        (StepPhase.CLEANUP, StepType.COMMAND),
    ]
    assert all(s.status is StepStatus.COMPLETED for s in steps)
    agent = steps[1]
    assert (agent.tokens_input, agent.tokens_output) == (120, 30)
    tools = [p["tool"] for p in await events(engine, job, EventType.AI_TOOL_CALLED.value)]
    assert tools == ["write", "append", "tokens"]
    gate_events = await events(engine, job, "gate.started", "gate.passed")
    assert sorted((p["gate"], "passed" in p) for p in gate_events) == [
        ("claims", False),
        ("claims", True),
        ("no-todo", False),
        ("no-todo", True),
    ]


async def test_an_edit_outside_the_claims_fails_the_claims_gate_and_keeps_the_worktree(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"docs/a.txt": "a\n", "src/app.py": "x = 1\n"})
    job = await run_task(
        engine,
        ws,
        repo,
        prompt="Fix the docs",
        claims=["docs/*.txt"],
        script=[
            {"write": "docs/a.txt", "content": "b\n"},
            {"rename": ["src/app.py", "src/main.py"]},
        ],
        # Later attempts touch only the docs, but the rename is still in the worktree.
        on_attempt={str(n): [{"write": "docs/a.txt", "content": f"{n}\n"}] for n in (2, 3)},
    )
    assert job.status is JobStatus.FAILED
    assert "claims" in (job.error or "")
    result = job.result or {}
    assert result["rejections"] == 3
    claims = next(g for g in result["gates"] if g["gate"] == "claims")
    assert claims["passed"] is False
    assert "src/app.py" in claims["summary"]
    assert "src/main.py" in claims["summary"]
    kept = Path(result["worktree"])
    assert (kept / "src" / "main.py").exists()  # kept for inspection
    assert log(repo) == ["initial"]  # nothing landed
    failed = await events(engine, job, "gate.failed")
    assert [p["gate"] for p in failed] == ["claims"] * 3


async def test_a_read_only_task_that_changes_a_file_fails_the_claims_gate(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"docs/a.txt": "a\n"})
    job = await run_task(
        engine,
        ws,
        repo,
        claims=["docs/**"],
        mode="read",
        script=[{"write": "docs/a.txt", "content": "changed\n"}],
    )
    assert job.status is JobStatus.FAILED
    claims = next(g for g in (job.result or {})["gates"] if g["gate"] == "claims")
    assert "read-only task changed 1 path(s)" in claims["summary"]


async def test_gates_that_fail_twice_and_pass_on_the_third_attempt_record_two_rejections(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"notes.txt": "notes\n"})
    job = await run_task(
        engine,
        ws,
        repo,
        prompt="Write the plan",
        claims=["plan.txt"],
        script=[{"write": "plan.txt", "content": "TODO: write the plan\n"}],
        on_attempt={"3": [{"write": "plan.txt", "content": "1. do it\n"}]},
    )
    assert job.status is JobStatus.COMPLETED, job.error
    result = job.result or {}
    assert (result["attempts"], result["rejections"]) == (3, 2)
    assert show(repo, "main", "plan.txt") == "1. do it"
    failed = await events(engine, job, "gate.failed")
    assert [(p["gate"], p["attempt"], p["exit_code"]) for p in failed] == [
        ("no-todo", 1, 1),
        ("no-todo", 2, 1),
    ]
    # The second and third runs were told what failed, in escalating words.
    steps = await engine.jobs.steps(ws, job.id)
    agents = [s for s in steps if s.type is StepType.AI_ACTION]
    assert [s.name for s in agents] == [f"agent script (attempt {n})" for n in (1, 2, 3)]


async def test_a_merge_conflict_fails_cleanly_naming_the_paths(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"shared.txt": "one\n"})
    job = await submit(
        engine,
        ws,
        repo,
        claims=["shared.txt"],
        script=[wait_for("go"), {"write": "shared.txt", "content": "from the agent\n"}],
    )
    async with running_worker(engine):
        await wait_for_agent(engine, job)
        # Meanwhile someone lands a different change to the same file on main.
        human_commit(repo, tmp_path / "other", "shared.txt", "from a human\n")
        go(repo, "go")  # now the agent goes on
        main_before = git(repo, "rev-parse", "main")
        done = await wait_for_status(engine, job.id, *DONE, timeout=30)
    assert done.status is JobStatus.FAILED
    assert "merge conflict on shared.txt" in (done.error or "")
    assert (done.result or {})["conflicts"] == ["shared.txt"]
    assert git(repo, "rev-parse", "main") == main_before  # main untouched
    assert git(repo, "status", "--porcelain") == ""
    branch = (done.result or {})["branch"]
    assert show(repo, branch, "shared.txt") == "from the agent"  # left for inspection


async def test_cancelling_a_running_agent_kills_its_process_group_and_cleans_up(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    marker = f"300.{uuid.uuid4().int % 10**6:06d}"  # names its processes in the process table
    script = f"sleep {marker} & sleep {marker}"
    job = await submit(engine, ws, repo, claims=["a.txt"], script=[{"run": script}])
    async with running_worker(engine):

        async def both_pids() -> list[int]:
            found = marked_pids(marker)
            return found if len(found) == 2 else []

        started = await wait_until(both_pids, what="the agent's processes", timeout=15)
        await engine.jobs.cancel(ws, job.id, actor=ACTOR, reason="test")
        done = await wait_for_status(engine, job.id, *DONE, timeout=10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        async def all_gone() -> bool:
            return all(gone(pid) for pid in started)

        await wait_until(all_gone, what="the agent's process group to be gone", timeout=5)
        branch = f"stitchwork/{job.id}"

        async def cleaned() -> bool:
            return not git(repo, "branch", "--list", branch)

        await wait_until(cleaned, what="the task's branch to be removed", timeout=10)
    assert done.status is JobStatus.CANCELLED
    assert not [p for p in worktrees_dir(engine).rglob(str(job.id)) if p.is_dir()]


async def test_a_profile_without_a_needed_capability_is_denied_at_submission(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    config = """
[profiles.reader]
adapter = "script"
capabilities = ["repo:read", "repo:write", "shell:exec"]
"""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config=config)
    with pytest.raises(GuardRailDenied) as denied:
        await submit(engine, ws, repo, script=[])
    assert denied.value.decision.required_capability == "git:commit"
    assert "reader" in denied.value.decision.reason
    assert await engine.jobs.list_jobs(ws) == []


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"repo": "relative/path"}, "absolute path"),
        ({"claims": ["../escape"]}, "escapes the repository"),
        ({"script": [{"write": "/etc/passwd", "content": ""}]}, "absolute path"),
        ({"profile": "nobody"}, "unknown agent profile 'nobody'"),
        ({"mode": "exclusive"}, "payload.mode"),
        ({}, "give payload.script"),
    ],
)
async def test_bad_agent_tasks_are_refused_on_submission_with_nothing_stored(
    engine: Engine, ws: uuid.UUID, tmp_path: Path, payload: dict[str, Any], words: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    body = {"repo": str(repo), "script": [], **payload}
    if not payload:
        del body["script"]
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(")):
        await engine.jobs.submit(ws, NewJob("agent-task", body), actor=ACTOR)
    assert await engine.jobs.list_jobs(ws) == []


async def test_a_path_that_is_not_a_repository_is_refused(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match="is not a git repository"):
        await submit(engine, ws, tmp_path, script=[])


async def test_two_tasks_merge_one_after_the_other_into_main(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a/x.txt": "a\n", "b/y.txt": "b\n"})
    first = await submit(
        engine, ws, repo, claims=["a/**"], script=[{"write": "a/x.txt", "content": "A\n"}]
    )
    second = await submit(
        engine, ws, repo, claims=["b/**"], script=[{"write": "b/y.txt", "content": "B\n"}]
    )
    async with running_worker(engine, concurrency=2):
        done = [await wait_for_status(engine, j.id, *DONE, timeout=30) for j in (first, second)]
    assert [j.status for j in done] == [JobStatus.COMPLETED] * 2
    assert (show(repo, "main", "a/x.txt"), show(repo, "main", "b/y.txt")) == ("A", "B")
    assert sum(s.startswith("Merge stitchwork/") for s in log(repo)) == 2


REBASE_CONFIG = """
[gates.no-todo]
command = "! grep -rn TODO --include=*.txt ."

[quality_rails]
agent-task = ["no-todo"]

[merge]
strategy = "rebase"
"""


async def test_rebased_work_passes_its_gates_again_before_it_lands(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "b.txt": "b\n"}, config=REBASE_CONFIG)
    job = await submit(
        engine,
        ws,
        repo,
        prompt="Edit a",
        claims=["a.txt"],
        script=[wait_for("go"), {"write": "a.txt", "content": "agent\n"}],
    )
    async with running_worker(engine):
        await wait_for_agent(engine, job)
        human_commit(repo, tmp_path / "other", "b.txt", "human\n")
        go(repo, "go")  # now the agent goes on
        done = await wait_for_status(engine, job.id, *DONE, timeout=30)
    assert done.status is JobStatus.COMPLETED, done.error
    assert log(repo) == ["Edit a", "human edit", "initial"]  # linear: rebased, fast-forwarded
    assert (show(repo, "main", "a.txt"), show(repo, "main", "b.txt")) == ("agent", "human")
    passed = await events(engine, job, "gate.passed")
    assert [p["gate"] for p in passed] == ["claims", "no-todo"] * 2  # again after the rebase


REVIEWER_CONFIG = """
[profiles.reviewer]
adapter = "script"
capabilities = ["repo:read"]
"""


async def test_a_read_only_profile_that_changes_files_fails_the_claims_gate(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config=REVIEWER_CONFIG)
    new = NewJob(
        "agent-review",
        {
            "repo": str(repo),
            "claims": ["**"],  # even claiming everything, a read-only run may not write
            "script": [{"write": "a.txt", "content": "rewritten\n"}],
        },
        max_attempts=1,
    )
    job = (await engine.jobs.submit(ws, new, actor=ACTOR)).job
    async with running_worker(engine):
        done = await wait_for_status(engine, job.id, *DONE, timeout=30)
    assert done.status is JobStatus.FAILED
    claims = next(g for g in (done.result or {})["gates"] if g["gate"] == "claims")
    assert "read-only task changed 1 path(s)" in claims["summary"]
    assert log(repo) == ["initial"]


async def test_a_review_that_changes_nothing_completes_without_merging(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config=REVIEWER_CONFIG)
    new = NewJob(
        "agent-review",
        {"repo": str(repo), "prompt": "Review a.txt", "script": [{"run": "cat a.txt"}]},
        max_attempts=1,
    )
    job = (await engine.jobs.submit(ws, new, actor=ACTOR)).job
    async with running_worker(engine):
        done = await wait_for_status(engine, job.id, *DONE, timeout=30)
    assert done.status is JobStatus.COMPLETED, done.error
    result = done.result or {}
    assert result["merged"] is False
    assert [g["gate"] for g in result["gates"]] == ["claims"]
    assert log(repo) == ["initial"]
    assert not git(repo, "branch", "--list", "stitchwork/*")  # nothing left behind


async def test_a_review_profile_may_not_run_agent_tasks(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"}, config=REVIEWER_CONFIG)
    with pytest.raises(GuardRailDenied) as denied:
        await submit(engine, ws, repo, script=[])
    assert denied.value.decision.required_capability == "repo:write"


async def test_the_claims_gate_classifies_claims_by_the_repositorys_tree_like_the_locks(
    engine: Engine, ws: uuid.UUID, tmp_path: Path
) -> None:
    """``lib/v1.2`` existing as a directory is a directory claim for the gate as it is for
    the scheduler; ``lib/v1.3``, which does not exist, stays a file claim even when the agent
    makes it a directory (its lock never covered ``lib/v1.3/x.py``)."""
    repo = make_repo(tmp_path / "repo", {"lib/v1.2/x.py": "x = 1\n"})
    inside = await run_task(
        engine,
        ws,
        repo,
        prompt="edit inside the directory claim",
        claims=["lib/v1.2"],
        script=[{"write": "lib/v1.2/x.py", "content": "x = 2\n"}],
    )
    assert inside.status is JobStatus.COMPLETED, inside.error
    widened = await run_task(
        engine,
        ws,
        repo,
        prompt="turn a file claim into a directory",
        claims=["lib/v1.3"],
        script=[{"write": "lib/v1.3/x.py", "content": "y = 1\n"}],
    )
    assert widened.status is JobStatus.FAILED
    gates = (widened.result or {})["gates"]
    assert [g["gate"] for g in gates if not g["passed"]] == ["claims"]
