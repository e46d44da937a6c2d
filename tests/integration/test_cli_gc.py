"""``stitchwork gc``: agent worktrees of ended jobs go, kept ones included; worktrees of jobs
that are still queued or running stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stitchwork.config import Settings
from stitchwork.domain.jobs import NewJob
from stitchwork.runner.worktrees import Worktree, Worktrees
from stitchwork.runtime.engine import open_engine
from tests.contract.agent_repos import git, make_repo
from tests.integration.test_cli import Cli


async def _setup(settings: Settings, repo: Path) -> tuple[list[Worktree], Worktree]:
    """Worktrees of a queued agent task and a queued agent review, and a kept worktree of an
    ended job whose branch holds a commit that is on no other branch."""
    worktrees = Worktrees(settings.agent_work_dir)
    live: list[Worktree] = []
    async with open_engine(settings) as engine:
        ws, _ = await engine.auth.ensure_workspace("default")
        for job_type in ("agent-task", "agent-review"):
            new = NewJob(job_type, {"repo": str(repo), "script": []})
            queued = (await engine.jobs.submit(ws.id, new, actor="test")).job
            live.append(await worktrees.create(repo, str(queued.id), target_branch="main"))
    failed = await worktrees.create(
        repo, "01a1f000-0000-7000-8000-000000000001", target_branch="main"
    )
    (failed.path / "work.txt").write_text("the failed task's work\n")
    assert await worktrees.commit(failed, "unmerged work")
    await worktrees.keep(failed)  # kept for inspection after a failure
    return live, failed


def test_gc_removes_ended_jobs_worktrees_keeps_live_ones_and_unmerged_branches(
    tmp_path: Path,
) -> None:
    data_dir, database_url = tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}"
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    settings = Settings(data_dir=data_dir, database_url=database_url)
    live, failed = asyncio.run(_setup(settings, repo))
    cli = Cli({"STITCHWORK_DATA_DIR": str(data_dir), "STITCHWORK_DATABASE_URL": database_url})

    result = cli("gc", str(repo))

    assert result.exit_code == 0, result.output
    assert f"removed {failed.path}" in result.output
    assert "1 worktree(s) removed" in result.output
    assert f"whose commits are on no other branch: {failed.branch}" in result.output
    assert not failed.path.exists()
    assert all(wt.path.exists() for wt in live)  # a running review's worktree stays too
    branches = git(repo, "branch", "--list", "stitchwork/*")
    assert all(wt.branch in branches for wt in live)
    assert failed.branch in branches  # the only copy of its commit

    forced = cli("gc", str(repo), "--force")

    assert forced.exit_code == 0, forced.output
    branches = git(repo, "branch", "--list", "stitchwork/*")
    assert failed.branch not in branches
    assert all(wt.branch in branches for wt in live)


def test_gc_of_a_path_that_is_not_a_repository_says_so(tmp_path: Path) -> None:
    cli = Cli(
        {
            "STITCHWORK_DATA_DIR": str(tmp_path / "data"),
            "STITCHWORK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}",
        }
    )
    result = cli("gc", str(tmp_path))
    assert result.exit_code == 1
    assert f"error: {tmp_path} is not a git repository" in result.output
