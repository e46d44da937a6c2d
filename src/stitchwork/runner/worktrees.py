"""Isolated git worktrees for agent jobs, outside the user's checkout.

Every repository gets one work dir, ``<work_root>/<name>-<hash of its path>/``, holding one
worktree per job (``<job_id>/`` on branch ``stitchwork/<job_id>``) and the integration worktree
the merge uses (``_integration/``). Creating a worktree only adds a branch and a worktree entry
to the repository: the user's working tree, index and HEAD are never touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import uuid
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from stitchwork.errors import Conflict, GitError, InvalidRequest, NotFound
from stitchwork.runner.git import (
    DEFAULT_IDENTITY,
    GitIdentity,
    PathChange,
    WorktreeEntry,
    find_commit,
    git,
    list_worktrees,
    parse_name_status,
    repo_root,
    resolved,
)
from stitchwork.runner.locks import file_lock

log = structlog.get_logger(__name__)

BRANCH_PREFIX = "stitchwork/"
INTEGRATION_DIR = "_integration"
# Job ids become a directory and a branch name: no separators, no leading dot or dash (so never
# "_integration", never an option), nothing git refuses in a ref name.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Collected:
    """What ``Worktrees.gc`` did.

    Attributes:
        removed: the worktree directories removed.
        kept_branches: ``stitchwork/*`` branches of ended jobs that were kept because their
            commits are on no other branch (``gc --force`` deletes them).
    """

    removed: list[Path]
    kept_branches: list[str]


@dataclass(frozen=True)
class Worktree:
    """A job's working tree: ``branch`` (short name) was created at ``base_commit`` of ``repo``."""

    path: Path
    branch: str
    base_commit: str
    repo: Path

    @property
    def job_id(self) -> str:
        return self.path.name


def repo_key(root: Path) -> str:
    """The name of a repository's work dir and lock file: readable, and unique per path."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    name = root.name.removesuffix(".git") or "repo"
    return f"{name}-{digest}"


def admin_lock(work_root: Path, root: Path) -> AbstractAsyncContextManager[None]:
    """Serialises ``git worktree add/remove/prune/lock`` on one repository, across processes.

    ``git worktree add`` reads the admin files of every worktree and fails (``failed to read
    .git/worktrees/<x>/commondir``) on one that another ``add`` is still writing.
    """
    return file_lock(work_root / "locks" / f"{repo_key(root)}.worktrees.lock")


def check_job_id(job_id: str) -> None:
    """Raise :class:`InvalidRequest` unless ``job_id`` is safe as a directory and branch name."""
    if not _JOB_ID.fullmatch(job_id) or ".." in job_id or job_id.endswith((".lock", ".")):
        raise InvalidRequest(
            f"job id {job_id!r} cannot name a worktree: use letters, digits, '.', '_' and '-'",
            field="job_id",
        )


class Worktrees:
    """Creates, inspects, commits and removes job worktrees under ``work_root``.

    Args:
        work_root: where the per-repository work dirs live; must be outside every repository
            it serves, so a job's files never show up in the user's ``git status``.
        identity: author and committer of the commits :meth:`commit` makes.
    """

    def __init__(self, work_root: Path, *, identity: GitIdentity = DEFAULT_IDENTITY) -> None:
        self.work_root = work_root.resolve()
        self.identity = identity

    def workdir(self, root: Path) -> Path:
        """The work dir of the repository whose root (see :func:`repo_root`) is ``root``."""
        if self.work_root.is_relative_to(root):
            raise InvalidRequest(
                f"work root {self.work_root} is inside repository {root}; "
                "job worktrees must live outside the user's checkout",
                field="work_root",
            )
        return self.work_root / repo_key(root)

    async def create(self, repo: Path, job_id: str, *, target_branch: str) -> Worktree:
        """Create the worktree of ``job_id`` on a new branch at ``target_branch``'s head.

        Idempotent for retried attempts: when the job's worktree already exists and is
        registered it is returned as it is (its base: where its branch leaves the target); when only
        its branch survived, a new worktree continues on that branch.

        Args:
            repo: the repository (any directory inside it).
            job_id: the job; names the directory and the branch ``stitchwork/<job_id>``.
            target_branch: the branch the job starts from and will be integrated into.

        Raises:
            InvalidRequest: ``repo`` is not a git repository, has no commits, or the job id is
                unusable.
            NotFound: ``target_branch`` does not exist.
            Conflict: the job's directory exists but is not its registered worktree.
        """
        check_job_id(job_id)
        root = await repo_root(repo)
        path = self.workdir(root) / job_id
        branch = BRANCH_PREFIX + job_id
        entry = await _registered(root, path)
        if entry is not None:
            if entry.branch != f"refs/heads/{branch}":
                raise Conflict(
                    f"{path} is registered as a worktree of {entry.branch or 'a detached HEAD'}, "
                    f"not of {branch}",
                    path=str(path),
                )
            if (path / ".git").exists():
                # Where the branch leaves the target now: after a rebase onto a moved target
                # (that a crash may have cut short), that is the new base, not the first one.
                base = await _fork_point(root, branch, target_branch)
                log.info("worktree_reused", job_id=job_id, path=str(path))
                return Worktree(path, branch, base, root)
            # Registered but its directory is gone: forget it, then create it afresh below.
            async with admin_lock(self.work_root, root):
                await git("worktree", "prune", cwd=root)
        if path.exists():
            raise Conflict(
                f"{path} exists but is not the worktree of job {job_id}; remove it or run gc",
                path=str(path),
            )
        target = await _target_commit(root, target_branch)
        path.parent.mkdir(parents=True, exist_ok=True)
        async with admin_lock(self.work_root, root):
            if await find_commit(f"refs/heads/{branch}", cwd=root) is None:
                await git("worktree", "add", "--quiet", "-b", branch, str(path), target, cwd=root)
                base = target
            else:
                # An earlier attempt's worktree was removed but its branch kept: continue on it.
                await git("worktree", "add", "--quiet", str(path), branch, cwd=root)
                base = await _fork_point(root, branch, target_branch)
        log.info("worktree_created", job_id=job_id, path=str(path), base=base)
        return Worktree(path, branch, base, root)

    async def reset(self, wt: Worktree) -> bool:
        """Bring the worktree to a known state: its branch head, nothing else.

        An earlier attempt that died may have left a rebase or merge in progress, staged or
        unstaged edits and untracked or ignored files: all are dropped (an unfinished rebase
        is aborted, which puts the branch back where it was). Commits on the branch stay.

        Returns:
            Whether anything had to be dropped.
        """
        dirty = bool((await git("status", "--porcelain", "-z", "--ignored", cwd=wt.path)).stdout)
        for operation in ("rebase", "merge", "cherry-pick"):
            state = await git(operation, "--abort", cwd=wt.path, check=False)
            dirty = dirty or state.returncode == 0
        await git("reset", "--quiet", "--hard", "HEAD", cwd=wt.path)
        await git("clean", "--quiet", "-ffdx", cwd=wt.path)
        if dirty:
            log.info("worktree_reset", job_id=wt.job_id, path=str(wt.path))
        return dirty

    async def head(self, wt: Worktree) -> str:
        """The commit the job branch points at."""
        return (await git("rev-parse", f"refs/heads/{wt.branch}", cwd=wt.repo)).text

    @staticmethod
    def rebased(wt: Worktree, base: str) -> Worktree:
        """``wt`` after its branch was rebased onto ``base``: changes count from there. (A
        later attempt finds the same base: where the branch leaves the target.)"""
        return replace(wt, base_commit=base)

    async def changed_paths(self, wt: Worktree) -> list[PathChange]:
        """Every path the job changed relative to ``wt.base_commit``, sorted by path.

        Committed, staged, unstaged and untracked (not ignored) changes all count, as they
        would after ``git add -A && git commit``. The worktree's own index is left alone: the
        snapshot is staged into a throw-away copy of it (``GIT_INDEX_FILE``), so an agent still
        running there sees no change to what it staged.
        """
        index = await _git_path(wt.path, "index")
        scratch = await _git_path(wt.path, f"stitchwork-index-{uuid.uuid4().hex}")
        try:
            if index.exists():
                # Starting from a copy keeps the stat cache: `add -A` rehashes only what changed.
                await asyncio.to_thread(shutil.copyfile, index, scratch)
            env = {"GIT_INDEX_FILE": str(scratch)}
            await git("add", "--all", cwd=wt.path, env=env)
            diff = await git(
                "diff", "--cached", "--name-status", "-z", "-M", "--no-relative",
                wt.base_commit, cwd=wt.path, env=env,
            )  # fmt: skip
        finally:
            scratch.unlink(missing_ok=True)
            scratch.with_name(scratch.name + ".lock").unlink(missing_ok=True)
        return sorted(parse_name_status(diff.stdout), key=lambda c: c.path)

    async def commit(self, wt: Worktree, message: str) -> str | None:
        """Stage everything in the worktree and commit it on the job branch.

        Returns:
            The new commit's sha, or ``None`` when nothing was left uncommitted.

        Raises:
            InvalidRequest: ``message`` is blank.
        """
        if not message.strip():
            raise InvalidRequest("a commit message must not be blank", field="message")
        await git("add", "--all", cwd=wt.path)
        staged = await git("diff", "--cached", "--quiet", cwd=wt.path, check=False)
        if staged.returncode == 0:
            return None
        if staged.returncode != 1:
            raise GitError(["diff", "--cached", "--quiet"], staged.returncode, _err(staged.stderr))
        # --cleanup=whitespace keeps lines starting with '#' (Markdown headings).
        await git(
            "commit", "--quiet", "--cleanup=whitespace", "--file=-",
            cwd=wt.path, input=message.encode(), identity=self.identity,
        )  # fmt: skip
        sha = (await git("rev-parse", "HEAD", cwd=wt.path)).text
        log.info("worktree_committed", job_id=wt.job_id, commit=sha)
        return sha

    async def keep(self, wt: Worktree, *, reason: str = "kept for inspection") -> None:
        """Keep the worktree of a failed job: lock it so :meth:`gc` and ``git worktree prune``
        leave it (``gc(include_kept=True)`` or :meth:`remove` still delete it)."""
        entry = await _registered(wt.repo, wt.path)
        if entry is None:
            raise NotFound(f"no worktree at {wt.path}", path=str(wt.path))
        if not entry.locked:
            async with admin_lock(self.work_root, wt.repo):
                await git(
                    "worktree",
                    "lock",
                    "--reason",
                    f"stitchwork: {reason}",
                    str(wt.path),
                    cwd=wt.repo,
                )
        log.info("worktree_kept", job_id=wt.job_id, path=str(wt.path))

    async def remove(self, wt: Worktree, *, delete_branch: bool = False) -> bool:
        """Delete the worktree (even a kept or dirty one), and its branch when asked and the
        branch's commits are all on another branch (never the only copy of a commit).

        Idempotent: removing a worktree that is already gone is not an error.

        Returns:
            Whether the branch was deleted.
        """
        await _remove_worktree(wt.repo, wt.path, self.workdir(wt.repo))
        ref = f"refs/heads/{wt.branch}"
        deleted = delete_branch and await _integrated(wt.repo, ref)
        if deleted:
            await _delete_branch(wt.repo, ref)
        log.info("worktree_removed", job_id=wt.job_id, branch_deleted=deleted)
        return deleted

    async def gc(
        self,
        repo: Path,
        live_job_ids: Iterable[str],
        *,
        delete_branches: bool = False,
        include_kept: bool = False,
    ) -> Collected:
        """Remove the worktrees of jobs not in ``live_job_ids``, then ``git worktree prune``.

        A ``stitchwork/*`` branch of a job that is not live is deleted when a non-stitchwork
        branch contains it (it was integrated); one whose commits are on no other branch is
        kept unless ``delete_branches`` (``gc --force``): it is the only copy of them. Kept
        worktrees (see :meth:`keep`) stay unless ``include_kept``. ``live_job_ids`` must
        include every job that may be creating its worktree right now.

        Returns:
            The worktree directories removed and the unmerged branches kept.
        """
        live = set(live_job_ids)
        root = await repo_root(repo)
        workdir = self.workdir(root)
        async with admin_lock(self.work_root, root):
            await git("worktree", "prune", cwd=root)
        registered = {e.path: e for e in await list_worktrees(root)}
        removed: list[Path] = []
        for entry in registered.values():
            name = entry.path.name
            if entry.path.parent != workdir or not _JOB_ID.fullmatch(name) or name in live:
                continue
            if entry.locked and not include_kept:
                continue
            await _remove_worktree(root, entry.path, workdir)
            removed.append(entry.path)
        if workdir.is_dir():
            # Directories git does not know about: a create that crashed half-way.
            for child in sorted(workdir.iterdir()):
                if child in registered or child.name in live or not _JOB_ID.fullmatch(child.name):
                    continue
                await asyncio.to_thread(shutil.rmtree, child)
                removed.append(child)
        kept = await _gc_branches(root, live, delete_all=delete_branches)
        log.info("worktrees_collected", repo=str(root), removed=len(removed), kept_branches=kept)
        return Collected(removed, kept)


async def _gc_branches(root: Path, live: set[str], *, delete_all: bool) -> list[str]:
    """Delete the branches of ended jobs whose commits are elsewhere (all with
    ``delete_all``); returns the short names of those kept."""
    refs = await git("for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}", cwd=root)
    checked_out = {e.branch for e in await list_worktrees(root) if e.branch}
    kept: list[str] = []
    for ref in refs.text.splitlines():
        job_id = ref.removeprefix(f"refs/heads/{BRANCH_PREFIX}")
        if job_id in live or ref in checked_out:
            continue
        if delete_all or await _integrated(root, ref):
            await _delete_branch(root, ref)
        else:
            kept.append(ref.removeprefix("refs/heads/"))
    return kept


async def _integrated(root: Path, ref: str) -> bool:
    """Whether a branch outside ``stitchwork/`` contains ``ref``'s head (true of a branch
    that does not exist: there is nothing of it to lose)."""
    if await find_commit(ref, cwd=root) is None:
        return True
    containing = await git(
        "for-each-ref", "--format=%(refname)", "--contains", ref, "refs/heads/", cwd=root
    )
    prefix = f"refs/heads/{BRANCH_PREFIX}"
    return any(not name.startswith(prefix) for name in containing.text.splitlines())


async def _delete_branch(root: Path, ref: str) -> None:
    if await find_commit(ref, cwd=root) is not None:
        await git("update-ref", "-d", ref, cwd=root)


async def _remove_worktree(root: Path, path: Path, workdir: Path) -> None:
    async with admin_lock(workdir.parent, root):
        await _remove_worktree_locked(root, path, workdir)


async def _remove_worktree_locked(root: Path, path: Path, workdir: Path) -> None:
    entry = await _registered(root, path)
    if entry is not None and (path / ".git").exists():
        # --force twice also removes a locked (kept) worktree.
        await git("worktree", "remove", "--force", "--force", str(path), cwd=root)
        return
    if entry is not None:
        await git("worktree", "prune", cwd=root)
        if entry.locked:  # prune keeps locked entries: unlock so the stale entry goes too
            await git("worktree", "unlock", str(path), cwd=root, check=False)
            await git("worktree", "prune", cwd=root)
    if _exists(path) and path.parent == workdir:
        await asyncio.to_thread(shutil.rmtree, path)


async def _registered(root: Path, path: Path) -> WorktreeEntry | None:
    wanted = resolved(path)
    return next((e for e in await list_worktrees(root) if e.path == wanted), None)


async def _target_commit(root: Path, target_branch: str) -> str:
    commit = await find_commit(f"refs/heads/{target_branch}", cwd=root)
    if commit is not None:
        return commit
    any_commit = await git("rev-list", "-n", "1", "--all", cwd=root, check=False)
    if not any_commit.stdout.strip():
        raise InvalidRequest(
            f"repository {root} has no commits yet; commit to {target_branch!r} first",
            field="repo",
            repo=str(root),
        )
    raise NotFound(
        f"branch {target_branch!r} does not exist in {root}",
        repo=str(root),
        branch=target_branch,
    )


async def _fork_point(root: Path, branch: str, target_branch: str) -> str:
    """Where ``branch`` left ``target_branch`` (for worktrees without a recorded base)."""
    target = await _target_commit(root, target_branch)
    return (await git("merge-base", f"refs/heads/{branch}", target, cwd=root)).text


async def _git_path(worktree: Path, name: str) -> Path:
    """A file in the worktree's own admin dir (``.git/worktrees/<id>/<name>``)."""
    out = await git("rev-parse", "--path-format=absolute", "--git-path", name, cwd=worktree)
    return Path(out.text)


def _exists(path: Path) -> bool:
    return path.exists()


def _err(stderr: bytes) -> str:
    return stderr.decode("utf-8", "replace")
