"""Agent work lands exactly once, whatever crashed before: each test sets up the state a crash
at one step of an agent task leaves behind (the recovery table in docs/agents.md), then runs
the task's next attempt on a real worker and a real git repository."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stitchwork.clock import FakeClock
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.domain.steps import StepType
from stitchwork.errors import InvalidTransition
from stitchwork.runner.trailers import commit_message
from stitchwork.runner.worktrees import Worktree, Worktrees
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.agent_repos import git, human_commit, log, make_repo, show
from tests.contract.helpers import running_worker, wait_for_status

DONE = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# What the task's script agent writes; a run of the agent shows as a second line.
SCRIPT = [{"append": "notes.txt", "content": "the task's line\n"}]


@pytest.fixture
async def engine(sqlite_backend: Backend, clock: FakeClock) -> AsyncIterator[Engine]:
    """SQLite, on the contract suite's fake clock (leases expire when a test says so)."""
    eng = await sqlite_backend.open_engine(clock=clock)
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def ws(engine: Engine) -> uuid.UUID:
    workspace, _ = await engine.auth.ensure_workspace("default")
    return workspace.id


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"notes.txt": "start\n", "other.txt": "other\n"})


async def submit(
    engine: Engine, ws: uuid.UUID, repo: Path, *, attempts: int = 3, **payload: Any
) -> Job:
    body = {"repo": str(repo), "prompt": "Add a line", "claims": ["**"], "script": SCRIPT}
    body.update(payload)
    new = NewJob("agent-task", body, max_attempts=attempts)
    return (await engine.jobs.submit(ws, new, actor="test")).job


async def run(engine: Engine, job: Job) -> Job:
    async with running_worker(engine):
        return await wait_for_status(engine, job.id, *DONE, timeout=30)


async def worktree_of(engine: Engine, repo: Path, job: Job) -> Worktree:
    """The worktree the job's earlier attempt made (the runner finds it again)."""
    return await Worktrees(engine.settings.agent_work_dir).create(
        repo, str(job.id), target_branch="main"
    )


async def committed_earlier(engine: Engine, repo: Path, job: Job) -> tuple[Worktree, str]:
    """An earlier attempt passed its gates and committed, then died before it merged."""
    wt = await worktree_of(engine, repo, job)
    (wt.path / "notes.txt").write_text("start\nthe task's line\n")
    commit = await Worktrees(engine.settings.agent_work_dir).commit(
        wt, commit_message("Add a line", str(job.id))
    )
    assert commit is not None
    return wt, commit


async def agent_steps(engine: Engine, ws: uuid.UUID, job: Job) -> int:
    return sum(s.type is StepType.AI_ACTION for s in await engine.jobs.steps(ws, job.id))


async def test_a_commit_left_on_the_branch_lands_without_running_the_agent_again(
    engine: Engine, ws: uuid.UUID, repo: Path
) -> None:
    job = await submit(engine, ws, repo)
    _, commit = await committed_earlier(engine, repo, job)

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert show(repo, "main", "notes.txt") == "start\nthe task's line"  # once, not twice
    assert await agent_steps(engine, ws, job) == 0
    assert git(repo, "merge-base", "--is-ancestor", commit, "main") == ""
    assert done.result is not None
    assert done.result["commit"] == git(repo, "rev-parse", "main")
    steps = [s.name for s in await engine.jobs.steps(ws, job.id)]
    assert "gate no-todo (earlier commits)" in steps  # the commit passed its gates again
    assert git(repo, "branch", "--list", "stitchwork/*") == ""  # merged: the branch went


async def test_a_change_already_on_the_target_completes_the_job_and_is_not_merged_again(
    engine: Engine, ws: uuid.UUID, repo: Path
) -> None:
    job = await submit(engine, ws, repo)
    wt, _ = await committed_earlier(engine, repo, job)
    # The earlier attempt moved main, then died before it recorded the job's state.
    git(repo, "update-ref", "refs/heads/main", git(repo, "rev-parse", wt.branch))
    landed = git(repo, "rev-parse", "main")

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert done.result is not None
    assert (done.result["commit"], done.result["recovered"]) == (landed, True)
    assert git(repo, "rev-parse", "main") == landed  # nothing merged again
    assert show(repo, "main", "notes.txt") == "start\nthe task's line"
    assert await agent_steps(engine, ws, job) == 0


async def test_a_merge_commit_already_on_the_target_is_found_by_its_trailer(
    engine: Engine, ws: uuid.UUID, repo: Path, tmp_path: Path
) -> None:
    job = await submit(engine, ws, repo)
    wt, _ = await committed_earlier(engine, repo, job)
    other = tmp_path / "merge"
    git(repo, "worktree", "add", "-q", "--detach", str(other), "main")
    (other / "other.txt").write_text("someone else\n")
    git(other, "add", "-A")
    git(other, "commit", "-qm", "someone else's work")
    message = commit_message(f"Merge {wt.branch}", str(job.id))
    git(other, "merge", "--no-ff", "-q", "-m", message, wt.branch)
    git(repo, "update-ref", "refs/heads/main", git(other, "rev-parse", "HEAD"))
    merged = git(repo, "rev-parse", "main")

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert done.result is not None
    assert done.result["commit"] == merged
    assert git(repo, "rev-parse", "main") == merged
    assert log(repo).count(f"Merge {wt.branch}") == 1


async def test_uncommitted_leftovers_of_an_earlier_attempt_are_dropped(
    engine: Engine, ws: uuid.UUID, repo: Path
) -> None:
    job = await submit(engine, ws, repo)
    wt = await worktree_of(engine, repo, job)
    (wt.path / "notes.txt").write_text("start\nhalf-done edit\n")
    (wt.path / "stray.txt").write_text("a file the dead attempt made\n")

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert show(repo, "main", "notes.txt") == "start\nthe task's line"
    assert "stray.txt" not in git(repo, "ls-tree", "--name-only", "main")
    steps = await engine.jobs.steps(ws, job.id)
    assert "dropped it" in (steps[0].output_tail or "")


async def test_earlier_commits_that_fail_their_gates_are_shown_to_the_agent(
    engine: Engine, ws: uuid.UUID, repo: Path
) -> None:
    """Commits an agent made itself before its attempt died are prior work: the gates run on
    them, and the agent is told about them and their failures."""
    job = await submit(engine, ws, repo, script=[{"write": "todo.txt", "content": "done\n"}])
    wt = await worktree_of(engine, repo, job)
    (wt.path / "todo.txt").write_text("TODO finish\n")
    git(wt.path, "add", "-A")
    git(wt.path, "commit", "-qm", "agent: work in progress")

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert show(repo, "main", "todo.txt") == "done"
    assert "agent: work in progress" in log(repo, "main^2")  # the agent's commit is kept
    prompts = [
        e.payload
        for e in await engine.store.list_events(job.id, types=["ai.tool_called"], limit=100)
    ]
    assert prompts  # the agent ran once, after the gates failed on the earlier commit
    steps = await engine.jobs.steps(ws, job.id)
    names = [s.name for s in steps]
    agent = next(i for i, s in enumerate(steps) if s.type is StepType.AI_ACTION)
    assert names.index("gate no-todo (earlier commits)") < agent


async def test_a_commit_whose_trailer_names_another_job_is_not_landed(
    sqlite_backend: Backend, repo: Path
) -> None:
    """In its sandbox an agent cannot commit at all (``.git`` is read-only); unconfined
    (``STITCHWORK_SANDBOX=off``) it can, and a commit claiming another job is refused."""
    forged = (
        "git add -A && git -c user.name=a -c user.email=a@b commit -qm sneaky "
        "-m 'Stitchwork-Job: 01a1f000-0000-7000-8000-000000000009'"
    )
    engine = await sqlite_backend.open_engine(sandbox="off")
    try:
        ws = (await engine.auth.ensure_workspace("default"))[0].id
        job = await submit(
            engine,
            ws,
            repo,
            attempts=1,
            script=[{"write": "notes.txt", "content": "changed\n"}, {"run": forged}],
        )
        before = git(repo, "rev-parse", "main")
        done = await run(engine, job)
    finally:
        await engine.close()

    assert done.status is JobStatus.FAILED
    assert "naming another job" in (done.error or "")
    assert git(repo, "rev-parse", "main") == before


async def test_a_landing_job_cannot_be_cancelled_and_a_crash_gets_a_recovery_attempt(
    engine: Engine, ws: uuid.UUID, repo: Path, clock: FakeClock
) -> None:
    """Once a job began moving its target, only the target decides how it ends: a cancel is
    refused, and a crash on its last attempt re-queues it to read the outcome off the target
    instead of failing it."""
    job = await submit(engine, ws, repo, attempts=1)
    reserved = await engine.queue.reserve("w1", 1, timedelta(seconds=5))
    assert [j.id for j in reserved] == [job.id]
    wt, _ = await committed_earlier(engine, repo, job)
    assert await engine.store.mark_landing(job.id, "w1", True)

    with pytest.raises(InvalidTransition, match="begun landing"):
        await engine.jobs.cancel(ws, job.id, actor="test")
    # The attempt moved main, then its worker died (its lease runs out).
    git(repo, "update-ref", "refs/heads/main", git(repo, "rev-parse", wt.branch))
    clock.advance(timedelta(seconds=10))
    swept = await engine.sweeper().sweep_once()

    assert [j.id for j in swept.requeued] == [job.id]  # attempt 2 of 1: a recovery attempt
    done = await run(engine, job)
    assert done.status is JobStatus.COMPLETED, done.error
    assert (done.attempt, done.result and done.result["commit"]) == (
        2,
        git(repo, "rev-parse", "main"),
    )


async def test_a_recovery_attempt_that_finds_nothing_landed_fails_and_says_so(
    engine: Engine, ws: uuid.UUID, repo: Path, clock: FakeClock
) -> None:
    job = await submit(engine, ws, repo, attempts=1)
    await engine.queue.reserve("w1", 1, timedelta(seconds=5))
    await worktree_of(engine, repo, job)  # it died before it committed anything
    assert await engine.store.mark_landing(job.id, "w1", True)
    before = git(repo, "rev-parse", "main")
    clock.advance(timedelta(seconds=10))
    await engine.sweeper().sweep_once()

    done = await run(engine, job)

    assert done.status is JobStatus.FAILED
    assert "does not hold this job's change" in (done.error or "")
    assert git(repo, "rev-parse", "main") == before
    assert await agent_steps(engine, ws, job) == 0  # attempts ran out: no agent run


async def test_a_stopped_tasks_commits_keep_their_branch(
    engine: Engine, ws: uuid.UUID, repo: Path
) -> None:
    """Clean-up never deletes the only copy of a commit: a branch with commits that are not
    on the target stays after its worktree is removed."""
    job = await submit(engine, ws, repo, attempts=1, script=[{"sleep": 30}])
    wt, commit = await committed_earlier(engine, repo, job)
    (wt.path / "notes.txt").write_text("start\nthe task's line\nTODO\n")  # fails its gate
    git(wt.path, "commit", "-qam", "agent: more work")
    async with running_worker(engine):
        await wait_for_status(engine, job.id, JobStatus.RUNNING)
        await engine.jobs.cancel(ws, job.id, actor="test")
        await wait_for_status(engine, job.id, JobStatus.CANCELLED)
    branches = git(repo, "branch", "--list", "stitchwork/*")
    assert wt.branch in branches
    assert git(repo, "merge-base", "--is-ancestor", commit, wt.branch) == ""


async def test_a_branch_rebased_before_the_crash_counts_its_changes_from_its_new_base(
    engine: Engine, ws: uuid.UUID, repo: Path, tmp_path: Path
) -> None:
    """The rebase strategy rebased the branch onto a moved target, then the process died:
    the retry's claims gate sees only the task's own change, not the target's new commits."""
    job = await submit(engine, ws, repo, claims=["notes.txt"])
    wt, _ = await committed_earlier(engine, repo, job)
    human_commit(repo, tmp_path / "human", "other.txt", "someone else's edit\n")
    git(wt.path, "rebase", "-q", "main")

    done = await run(engine, job)

    assert done.status is JobStatus.COMPLETED, done.error
    assert done.result is not None
    assert done.result["changed"] == ["notes.txt"]
    assert show(repo, "main", "notes.txt") == "start\nthe task's line"
    assert show(repo, "main", "other.txt") == "someone else's edit"
