"""Integrating a job branch into its target branch, one job at a time per repository.

All work happens in a detached integration worktree (``<repo work dir>/_integration``) that is
reused between jobs; the target branch is then moved with a compare-and-swap ``update-ref``.
The user's checkout is never touched, which is why a target branch checked out in any working
tree is refused (as git's ``receive.denyCurrentBranch`` does for pushes).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import NoReturn

import structlog

from stitchwork.errors import (
    Conflict,
    GitError,
    InvalidRequest,
    MergeConflict,
    NotFound,
    TargetMoved,
)
from stitchwork.runner.failpoints import failpoint
from stitchwork.runner.git import (
    DEFAULT_IDENTITY,
    STDERR_TAIL_CHARS,
    GitIdentity,
    GitResult,
    find_commit,
    git,
    is_ancestor,
    list_worktrees,
    repo_root,
    resolved,
)
from stitchwork.runner.locks import file_lock
from stitchwork.runner.trailers import find_landed
from stitchwork.runner.worktrees import INTEGRATION_DIR, Worktree, admin_lock, repo_key

log = structlog.get_logger(__name__)

SWAP_ATTEMPTS = 3


class Strategy(StrEnum):
    MERGE = "merge"
    REBASE = "rebase"
    BRANCH_ONLY = "branch-only"


@dataclass(frozen=True)
class MergeResult:
    """How a job landed.

    Attributes:
        commit: the target's new head (merge, rebase) or the job branch's head (branch-only).
        strategy: the strategy used.
        target_moved: the target had moved past the job's base commit.
        rebased: the job branch was rewritten onto the moved target, so its gates ran on
            other code than what landed and should run again.
        already: the target already held the job's change (found by its ``Stitchwork-Job``
            trailer); nothing was integrated and ``commit`` is the commit that carries it.
    """

    commit: str
    strategy: Strategy
    target_moved: bool
    rebased: bool
    already: bool = False


async def integrate(
    repo: Path,
    wt: Worktree,
    *,
    target_branch: str,
    strategy: Strategy | str,
    message: str,
    lock_dir: Path,
    identity: GitIdentity = DEFAULT_IDENTITY,
    fast_forward_only: bool = False,
    job_id: str | None = None,
    since: datetime | None = None,
    before_swap: Callable[[], Awaitable[None]] | None = None,
) -> MergeResult:
    """Land the job branch of ``wt`` on ``target_branch``.

    Only committed work is integrated (call ``Worktrees.commit`` first). ``merge`` creates a
    ``--no-ff`` merge commit of the job branch onto the target's current head. ``rebase``
    replays the job branch onto the target's current head (rewriting the job branch and
    resetting the clean job worktree to it) and fast-forwards the target. ``branch-only``
    leaves the branch for someone else to merge. ``rebase`` with ``fast_forward_only`` never
    rewrites anything: it lands exactly the commits whose gates ran, or refuses when the
    target moved (the caller rebases, re-runs the gates and tries again).

    Integrations of one repository run one at a time, across processes too. A target moved
    by someone else between reading it and updating it is retried a few times.

    Always refused, without touching anything, when ``target_branch`` is checked out in a
    working tree (the user's checkout): moving it would leave that checkout's files and index
    out of step with its HEAD. Check out another branch there, or use ``branch-only``.

    Args:
        repo: the repository (any directory inside it).
        wt: the job's worktree, from ``Worktrees.create``.
        target_branch: the branch to land on (short name).
        strategy: ``merge``, ``rebase`` or ``branch-only``.
        message: the merge commit's message (unused by rebase and branch-only).
        lock_dir: where the per-repository lock files live (shared by all processes).
        identity: committer of merge commits and rebased commits.
        fast_forward_only: with ``rebase``, refuse instead of rebasing onto a moved target.
        job_id: when given, the target is searched (under the lock) for a commit whose
            ``Stitchwork-Job`` trailer names this job, dated after ``since``; if there is one,
            the change already landed and nothing is integrated (``MergeResult.already``).
        since: see ``job_id``.
        before_swap: awaited once, under the lock, right before the target first moves; if
            it raises, nothing moves (a job records there that it is landing).

    Raises:
        MergeConflict: the branch conflicts with the target; the job branch, the target and
            the job worktree are left as they were and the integration worktree is clean.
        Conflict: the target is checked out, kept moving under us, or (``fast_forward_only``)
            moved past the job branch's base.
        NotFound: the target or the job branch does not exist.
        InvalidRequest: unknown strategy, ``fast_forward_only`` without ``rebase``, or ``wt``
            belongs to another repository.
    """
    try:
        strategy = Strategy(strategy)
    except ValueError:
        raise InvalidRequest(
            f"unknown strategy {strategy!r}; use one of {', '.join(Strategy)}", field="strategy"
        ) from None
    if fast_forward_only and strategy is not Strategy.REBASE:
        raise InvalidRequest(
            f"fast_forward_only needs strategy 'rebase', not {str(strategy)!r}", field="strategy"
        )
    root = await repo_root(repo)
    if root != wt.repo:
        raise InvalidRequest(f"worktree {wt.path} belongs to {wt.repo}, not {root}", field="repo")
    if strategy is Strategy.BRANCH_ONLY:
        target = await _head(root, target_branch)
        tip = await _head(root, wt.branch)
        return MergeResult(tip, strategy, target != wt.base_commit, rebased=False)
    async with repo_lock(lock_dir, root):
        failpoint("merge.locked")
        if job_id is not None:
            landed = await find_landed(root, target_branch, job_id, since=since)
            if landed is not None:
                log.info("job_already_landed", job_id=job_id, commit=landed)
                return MergeResult(landed, strategy, False, rebased=False, already=True)
        await _refuse_checked_out(root, target_branch)
        integration = await _integration_worktree(
            root, wt.path.parent / INTEGRATION_DIR, await _head(root, target_branch)
        )
        rebased = False  # a retry may rebase an already rebased branch again: still rebased
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            old = await _head(root, target_branch)
            if strategy is Strategy.MERGE:
                new = await _merge(integration, wt, old, target_branch, message, identity)
            else:
                new, rewritten = await _rebase(
                    integration, wt, old, target_branch, identity, rewrite=not fast_forward_only
                )
                rebased = rebased or rewritten
            moved = old != wt.base_commit
            if new != old and before_swap is not None:
                await before_swap()
                before_swap = None
            if new == old or await _swap(root, target_branch, new, old, wt.job_id):
                failpoint("merge.swapped")
                log.info(
                    "job_integrated",
                    job_id=wt.job_id,
                    strategy=str(strategy),
                    commit=new,
                    target_moved=moved,
                    rebased=rebased,
                )
                return MergeResult(new, strategy, moved, rebased)
            log.warning("integration_target_moved", job_id=wt.job_id, attempt=attempt)
    raise Conflict(
        f"{target_branch} kept moving while {wt.branch} was being integrated; try again",
        branch=wt.branch,
        target=target_branch,
    )


async def _merge(
    integration: Path,
    wt: Worktree,
    old: str,
    target_branch: str,
    message: str,
    identity: GitIdentity,
) -> str:
    branch_ref = f"refs/heads/{wt.branch}"
    tip = await _head(wt.repo, wt.branch)
    if await is_ancestor(tip, old, cwd=integration):
        return old  # already contained in the target: nothing to land
    await _reset(integration, old)
    result = await git(
        "merge", "--no-ff", "--no-edit", "--cleanup=whitespace",
        "-m", message, branch_ref,
        cwd=integration, check=False, identity=identity,
    )  # fmt: skip
    if result.returncode != 0:
        await _fail(integration, old, result, "merge", wt.branch, target_branch)
    return (await git("rev-parse", "HEAD", cwd=integration)).text


async def _rebase(
    integration: Path,
    wt: Worktree,
    old: str,
    target_branch: str,
    identity: GitIdentity,
    *,
    rewrite: bool,
) -> tuple[str, bool]:
    tip = await _head(wt.repo, wt.branch)
    if await is_ancestor(old, tip, cwd=integration):
        return tip, False  # the target can simply fast-forward
    if not rewrite:
        raise TargetMoved(
            f"{target_branch} moved to {old[:12]}, past the base of {wt.branch}; rebase it, "
            "run its gates again and retry",
            branch=wt.branch,
            target=target_branch,
            target_head=old,
        )
    dirty = await git("status", "--porcelain", "-z", cwd=wt.path)
    if dirty.stdout:
        raise Conflict(
            f"job worktree {wt.path} has uncommitted changes; commit them before a rebase",
            path=str(wt.path),
        )
    await _reset(integration, tip)
    result = await git(
        "-c", "rebase.updateRefs=false",  # never move other branches along
        "rebase", "--no-autostash", "--quiet", old,
        cwd=integration, check=False, identity=identity,
    )  # fmt: skip
    if result.returncode != 0:
        await _fail(integration, old, result, "rebase", wt.branch, target_branch)
    new = (await git("rev-parse", "HEAD", cwd=integration)).text
    if not await _swap(wt.repo, wt.branch, new, tip, wt.job_id):
        raise Conflict(f"{wt.branch} changed during its rebase; try again", branch=wt.branch)
    # The job worktree was clean: bring its files to the rebased branch so gates re-run there.
    await git("reset", "--quiet", "--hard", cwd=wt.path)
    return new, True


async def _fail(
    integration: Path, old: str, result: GitResult, operation: str, branch: str, target: str
) -> NoReturn:
    """Undo a failed merge/rebase, leave the integration worktree clean at ``old``, raise."""
    unmerged = await git(
        "diff", "--name-only", "--diff-filter=U", "-z", cwd=integration, check=False
    )
    paths = sorted({os.fsdecode(p) for p in unmerged.stdout.split(b"\0") if p})
    await git(operation, "--abort", cwd=integration, check=False)
    await _reset(integration, old)
    if paths:
        log.info("integration_conflict", branch=branch, target=target, paths=paths)
        raise MergeConflict(branch, target, paths, strategy=operation)
    tail = os.fsdecode(result.stderr)[-STDERR_TAIL_CHARS:]
    raise GitError([operation, branch], result.returncode, tail)


async def _swap(root: Path, branch: str, new: str, old: str, job_id: str) -> bool:
    """Move ``branch`` from ``old`` to ``new`` unless someone else moved it first."""
    result = await git(
        "update-ref", "-m", f"stitchwork: integrate job {job_id}",
        f"refs/heads/{branch}", new, old,
        cwd=root, check=False,
    )  # fmt: skip
    if result.returncode == 0:
        return True
    if await find_commit(f"refs/heads/{branch}", cwd=root) not in (None, old):
        return False  # lost the compare-and-swap: the caller re-reads and retries
    raise GitError(
        ["update-ref", f"refs/heads/{branch}"], result.returncode, os.fsdecode(result.stderr)
    )


async def _head(root: Path, branch: str) -> str:
    commit = await find_commit(f"refs/heads/{branch}", cwd=root)
    if commit is None:
        raise NotFound(f"branch {branch!r} does not exist in {root}", branch=branch)
    return commit


async def _refuse_checked_out(root: Path, target_branch: str) -> None:
    ref = f"refs/heads/{target_branch}"
    for entry in await list_worktrees(root):
        if entry.branch == ref:
            raise Conflict(
                f"{target_branch} is checked out in {entry.path}; stitchwork never moves a "
                "branch under a working tree. Check out another branch there, or integrate "
                "with strategy 'branch-only' and merge the branch yourself",
                branch=target_branch,
                path=str(entry.path),
            )


async def _integration_worktree(root: Path, path: Path, commit: str) -> Path:
    """The repository's detached integration worktree, created on first use."""
    registered = {e.path for e in await list_worktrees(root)}
    if resolved(path) in registered and (path / ".git").exists():
        # A process that died mid-rebase leaves the rebase state behind; drop it.
        await git("rebase", "--quit", cwd=path, check=False)
        return path
    async with admin_lock(path.parent.parent, root):
        await git("worktree", "prune", cwd=root)
        await asyncio.to_thread(_clear_dir, path)
        await git("worktree", "add", "--quiet", "--detach", str(path), commit, cwd=root)
    return path


def _clear_dir(path: Path) -> None:
    """Remove what a pruned integration worktree left and make sure its parent exists."""
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


async def _reset(integration: Path, commit: str) -> None:
    # checkout --force --detach also drops merge state and never moves a branch.
    await git("checkout", "--quiet", "--force", "--detach", commit, cwd=integration)
    await git("clean", "--quiet", "-ffdx", cwd=integration)


def repo_lock(lock_dir: Path, root: Path) -> AbstractAsyncContextManager[None]:
    """Hold the integration lock of the repository at ``root``, across processes: one
    integration at a time (``<lock_dir>/<repo key>.lock``)."""
    return file_lock(lock_dir / f"{repo_key(root)}.lock")
