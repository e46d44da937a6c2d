"""Integrating job branches on real git repositories: merge, rebase and branch-only, concurrent
jobs landing one at a time, a target that moved, conflicts, and a checked-out target refused.

The user's checkout is on ``dev`` (the target ``main`` may not be checked out anywhere), and it
carries uncommitted work that every test proves untouched.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from stitchwork.errors import Conflict, InvalidRequest, MergeConflict
from stitchwork.runner import merge
from stitchwork.runner.git import GitIdentity
from stitchwork.runner.merge import MergeResult, Strategy, integrate
from stitchwork.runner.worktrees import Worktree, Worktrees, repo_key
from tests.contract.test_worktrees import (
    advance,
    head,
    init_repo,
    isolate_git,
    run,
    snapshot,
    write,
)

IDENTITY = GitIdentity("Integrator", "integrator@example.test")


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_git(monkeypatch, tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = init_repo(
        tmp_path.resolve() / "user repo",
        {"README.md": "hello\n", "shared.txt": "one\ntwo\nthree\n"},
    )
    run(path, "checkout", "-q", "-b", "dev")
    write(path, {"README.md": "user's unsaved edit\n", "scratch.txt": "untracked\n"})
    return path


@pytest.fixture
def worktrees(tmp_path: Path) -> Worktrees:
    return Worktrees(tmp_path / "work", identity=GitIdentity("Agent", "agent@example.test"))


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "locks"


JobFactory = Callable[..., Awaitable[Worktree]]


@pytest.fixture
def job(repo: Path, worktrees: Worktrees) -> JobFactory:
    """Create a job worktree from ``main``, write ``files`` there and commit them."""

    async def make(job_id: str, files: dict[str, str]) -> Worktree:
        wt = await worktrees.create(repo, job_id, target_branch="main")
        write(wt.path, files)
        assert await worktrees.commit(wt, f"{job_id}: work") is not None
        return wt

    return make


def files_at(repo: Path, ref: str) -> dict[str, str]:
    names = run(repo, "ls-tree", "-r", "--name-only", "-z", ref).split("\0")
    return {n: run(repo, "show", f"{ref}:{n}") for n in names if n}


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    try:
        run(repo, "merge-base", "--is-ancestor", ancestor, descendant)
    except Exception:
        return False
    return True


def assert_integration_clean(wt: Worktree) -> None:
    integration = wt.path.parent / "_integration"
    assert run(integration, "status", "--porcelain", "--untracked-files=all") == ""
    state = run(integration, "rev-parse", "--path-format=absolute", "--git-dir").strip()
    leftovers = {"MERGE_HEAD", "rebase-merge", "rebase-apply"} & set(os.listdir(state))
    assert not leftovers
    assert run(integration, "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"  # detached


async def test_merge_of_two_jobs_touching_different_files_lands_both(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    user_before = snapshot(repo)
    base = head(repo, "main")
    one = await job("one", {"a.txt": "from one\n"})
    two = await job("two", {"b.txt": "from two\n"})
    tips = {wt.job_id: head(repo, wt.branch) for wt in (one, two)}

    first = await integrate(
        repo, one, target_branch="main", strategy="merge", message="Merge one", lock_dir=lock_dir
    )
    second = await integrate(
        repo, two, target_branch="main", strategy=Strategy.MERGE, message="Merge two",
        lock_dir=lock_dir, identity=IDENTITY,
    )  # fmt: skip

    assert first == MergeResult(first.commit, Strategy.MERGE, target_moved=False, rebased=False)
    assert second == MergeResult(
        head(repo, "main"), Strategy.MERGE, target_moved=True, rebased=False
    )
    assert run(repo, "rev-parse", f"{second.commit}^1", f"{second.commit}^2").split() == [
        first.commit,
        tips["two"],
    ]
    assert run(repo, "rev-parse", f"{first.commit}^1").strip() == base
    assert all(is_ancestor(repo, tip, "main") for tip in tips.values())
    assert files_at(repo, "main") == {
        "README.md": "hello\n",
        "shared.txt": "one\ntwo\nthree\n",
        "a.txt": "from one\n",
        "b.txt": "from two\n",
    }
    assert run(repo, "log", "-1", "--format=%s|%cn", "main").strip() == "Merge two|Integrator"
    assert head(repo, two.branch) == tips["two"]  # merge leaves the job branch as it was
    assert snapshot(repo) == user_before
    assert_integration_clean(two)


async def test_four_concurrent_integrations_all_land(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    jobs = [await job(f"job-{i}", {f"file-{i}.txt": f"{i}\n"}) for i in range(4)]
    tips = [head(repo, wt.branch) for wt in jobs]

    results = await asyncio.gather(
        *(
            integrate(
                repo, wt, target_branch="main", strategy="merge", message=f"Merge {wt.job_id}",
                lock_dir=lock_dir,
            )
            for wt in jobs
        )
    )  # fmt: skip

    main = head(repo, "main")
    assert main in {r.commit for r in results}
    assert all(is_ancestor(repo, tip, main) for tip in tips)
    assert all(is_ancestor(repo, r.commit, main) for r in results)
    assert sum(not r.target_moved for r in results) == 1  # only the first saw the base
    assert {f"file-{i}.txt" for i in range(4)} <= set(files_at(repo, "main"))
    assert len(run(repo, "rev-list", "--merges", "main").split()) == 4
    assert_integration_clean(jobs[0])


async def test_integration_waits_for_a_lock_held_by_another_process(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    os.mkdir(lock_dir)
    # A separate open file description conflicts exactly as another process's would.
    fd = os.open(lock_dir / f"{repo_key(wt.repo)}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        task = asyncio.create_task(
            integrate(
                repo, wt, target_branch="main", strategy="merge", message="m", lock_dir=lock_dir
            )
        )
        await asyncio.sleep(0.3)
        assert not task.done()
        assert head(repo, "main") == wt.base_commit
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    result = await asyncio.wait_for(task, 10)
    assert head(repo, "main") == result.commit != wt.base_commit


async def test_merge_onto_a_target_that_moved_since_the_worktree_was_created(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    moved = advance(repo, "main", "pushed by someone else")

    result = await integrate(
        repo, wt, target_branch="main", strategy="merge", message="m", lock_dir=lock_dir
    )

    assert result.target_moved
    assert not result.rebased
    assert run(repo, "rev-parse", f"{result.commit}^1").strip() == moved
    assert head(repo, "main") == result.commit


async def test_a_target_moved_during_integration_is_detected_and_retried(
    repo: Path, job: JobFactory, lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    real_swap = merge._swap
    pushed: list[str] = []

    async def swap_after_a_push(root: Path, branch: str, new: str, old: str, job_id: str) -> bool:
        if branch == "main" and not pushed:
            pushed.append(advance(repo, "main", "racing push"))
        return await real_swap(root, branch, new, old, job_id)

    monkeypatch.setattr(merge, "_swap", swap_after_a_push)

    result = await integrate(
        repo, wt, target_branch="main", strategy="merge", message="m", lock_dir=lock_dir
    )

    assert pushed
    assert head(repo, "main") == result.commit
    assert run(repo, "rev-parse", f"{result.commit}^1").strip() == pushed[0]  # push kept
    assert is_ancestor(repo, head(repo, wt.branch), "main")


async def test_rebase_fast_forwards_or_rebases_onto_a_moved_target(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    one = await job("one", {"a.txt": "a\n"})
    two = await job("two", {"b.txt": "b\n"})
    two_tip = head(repo, two.branch)

    first = await integrate(
        repo, one, target_branch="main", strategy="rebase", message="m", lock_dir=lock_dir
    )
    second = await integrate(
        repo, two, target_branch="main", strategy="rebase", message="m", lock_dir=lock_dir,
        identity=IDENTITY,
    )  # fmt: skip

    assert first == MergeResult(head(one.path), Strategy.REBASE, False, rebased=False)
    assert second.rebased
    assert second.target_moved
    assert second.commit == head(repo, "main") == head(repo, two.branch) != two_tip
    assert run(repo, "rev-list", "--merges", "main") == ""  # linear history
    assert run(repo, "rev-parse", "main^").strip() == first.commit
    assert run(repo, "log", "-1", "--format=%an|%cn", "main").strip() == "Agent|Integrator"
    # The job worktree follows its rebased branch, ready for the gates to run again.
    assert head(two.path) == second.commit
    assert (two.path / "a.txt").read_text() == "a\n"
    assert run(two.path, "status", "--porcelain") == ""
    assert_integration_clean(two)


async def test_rebase_refuses_a_job_worktree_with_uncommitted_changes(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    advance(repo, "main")
    tip, main = head(repo, wt.branch), head(repo, "main")
    write(wt.path, {"late.txt": "not committed\n"})

    with pytest.raises(Conflict, match="uncommitted changes"):
        await integrate(
            repo, wt, target_branch="main", strategy="rebase", message="m", lock_dir=lock_dir
        )

    assert (head(repo, wt.branch), head(repo, "main")) == (tip, main)
    assert (wt.path / "late.txt").read_text() == "not committed\n"


async def test_fast_forward_only_lands_validated_commits_or_refuses_a_moved_target(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    one = await job("one", {"a.txt": "a\n"})
    two = await job("two", {"b.txt": "b\n"})
    ff = {"strategy": "rebase", "message": "m", "lock_dir": lock_dir, "fast_forward_only": True}

    landed = await integrate(repo, one, target_branch="main", **ff)
    assert landed == MergeResult(head(repo, one.branch), Strategy.REBASE, False, False)
    assert head(repo, "main") == landed.commit

    two_tip = head(repo, two.branch)
    with pytest.raises(Conflict, match=r"moved to .*run its gates again") as raised:
        await integrate(repo, two, target_branch="main", **ff)
    assert not isinstance(raised.value, MergeConflict)
    assert head(repo, "main") == landed.commit
    assert head(repo, two.branch) == two_tip == head(two.path)

    with pytest.raises(InvalidRequest, match="needs strategy 'rebase'"):
        await integrate(repo, two, target_branch="main", **{**ff, "strategy": "merge"})


async def test_branch_only_leaves_the_target_alone(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    main = head(repo, "main")

    result = await integrate(
        repo, wt, target_branch="main", strategy="branch-only", message="m", lock_dir=lock_dir
    )

    assert result == MergeResult(head(repo, wt.branch), Strategy.BRANCH_ONLY, False, False)
    assert head(repo, "main") == main
    assert not (wt.path.parent / "_integration").exists()


@pytest.mark.parametrize("strategy", ["merge", "rebase"])
async def test_conflict_names_the_paths_and_leaves_everything_as_it_was(
    repo: Path, job: JobFactory, lock_dir: Path, strategy: str
) -> None:
    one = await job("one", {"shared.txt": "one\nTWO from one\nthree\n", "x.txt": "x\n"})
    two = await job("two", {"shared.txt": "one\nTWO from two\nthree\n", "y.txt": "y\n"})
    await integrate(
        repo, one, target_branch="main", strategy=strategy, message="m", lock_dir=lock_dir
    )
    main, two_tip = head(repo, "main"), head(repo, two.branch)
    user_before = snapshot(repo)

    with pytest.raises(MergeConflict) as raised:
        await integrate(
            repo, two, target_branch="main", strategy=strategy, message="m", lock_dir=lock_dir
        )

    assert raised.value.paths == ["shared.txt"]
    assert raised.value.branch == "stitchwork/two"
    assert "shared.txt" in str(raised.value)
    assert head(repo, "main") == main
    assert head(repo, two.branch) == two_tip
    assert head(two.path) == two_tip
    assert run(two.path, "status", "--porcelain") == ""
    assert_integration_clean(two)
    assert snapshot(repo) == user_before
    # The integration worktree is reusable right away.
    three = await job("three", {"z.txt": "z\n"})
    landed = await integrate(
        repo, three, target_branch="main", strategy=strategy, message="m", lock_dir=lock_dir
    )
    assert head(repo, "main") == landed.commit


async def test_a_target_checked_out_in_the_users_worktree_is_refused(
    repo: Path, job: JobFactory, lock_dir: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    run(repo, "stash", "-q", "-u")
    run(repo, "checkout", "-q", "main")
    run(repo, "stash", "pop", "-q")
    user_before = snapshot(repo)
    main = head(repo, "main")

    for strategy in ("merge", "rebase"):
        with pytest.raises(Conflict, match=r"checked out in .*branch-only") as raised:
            await integrate(
                repo, wt, target_branch="main", strategy=strategy, message="m", lock_dir=lock_dir
            )
        assert not isinstance(raised.value, MergeConflict)

    assert head(repo, "main") == main
    assert snapshot(repo) == user_before
    result = await integrate(
        repo, wt, target_branch="main", strategy="branch-only", message="m", lock_dir=lock_dir
    )
    assert result.commit == head(repo, wt.branch)


async def test_a_job_without_commits_lands_nothing(
    repo: Path, worktrees: Worktrees, lock_dir: Path
) -> None:
    wt = await worktrees.create(repo, "idle", target_branch="main")
    main = head(repo, "main")

    result = await integrate(
        repo, wt, target_branch="main", strategy="merge", message="m", lock_dir=lock_dir
    )

    assert result == MergeResult(main, Strategy.MERGE, target_moved=False, rebased=False)
    assert head(repo, "main") == main


async def test_unknown_strategy_and_foreign_worktree_are_rejected(
    repo: Path, job: JobFactory, lock_dir: Path, tmp_path: Path
) -> None:
    wt = await job("one", {"a.txt": "a\n"})
    with pytest.raises(InvalidRequest, match="unknown strategy 'squash'"):
        await integrate(
            repo, wt, target_branch="main", strategy="squash", message="m", lock_dir=lock_dir
        )
    other = init_repo(tmp_path / "other", {"f": "f\n"})
    with pytest.raises(InvalidRequest, match="belongs to"):
        await integrate(
            other, wt, target_branch="main", strategy="merge", message="m", lock_dir=lock_dir
        )
