"""Job worktrees on real git repositories: isolation from the user's checkout, changed paths,
commits, removal, garbage collection and the creation time on a 10,000-file repository.

Git runs with an empty global config and no identity (see ``isolated_git``): the runner must
work on a machine where git was never configured.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stitchwork.errors import Conflict, InvalidRequest, NotFound
from stitchwork.runner.git import ChangeKind, GitIdentity, PathChange, git, list_worktrees
from stitchwork.runner.worktrees import Worktree, Worktrees

SETUP_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "user@example.test",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "user@example.test",
}


def run(cwd: Path, *args: str, input: bytes | None = None) -> str:
    """Run git synchronously for test setup and inspection, as the user would."""
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **SETUP_IDENTITY, "LC_ALL": "C"},
        input=input,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode()


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def init_repo(path: Path, files: dict[str, str], *, branch: str = "main") -> Path:
    """A repository with one commit of ``files`` on ``branch``, checked out."""
    path.mkdir(parents=True)
    run(path, "init", "-q", "-b", branch)
    write(path, files)
    run(path, "add", "-A")
    run(path, "commit", "-q", "-m", "initial")
    return path


def head(repo: Path, ref: str = "HEAD") -> str:
    return run(repo, "rev-parse", ref).strip()


def advance(repo: Path, branch: str, message: str = "moved") -> str:
    """Add an empty commit to ``branch`` without a checkout (as a push from elsewhere would)."""
    commit = run(repo, "commit-tree", f"{branch}^{{tree}}", "-p", branch, "-m", message).strip()
    run(repo, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def snapshot(repo: Path) -> dict[str, Any]:
    """Everything about a checkout the runner must not change: index, HEAD, status, files.

    ``--no-optional-locks`` stops status from refreshing (rewriting) the index it inspects.
    """
    return {
        "index": (repo / ".git" / "index").read_bytes(),
        "status": run(
            repo, "--no-optional-locks", "status", "--porcelain=v2", "--branch", "-z", "-uall"
        ),
        "staged": run(repo, "--no-optional-locks", "diff", "--cached", "--binary"),
        "unstaged": run(repo, "--no-optional-locks", "diff", "--binary"),
        "head": run(repo, "symbolic-ref", "-q", "HEAD") + head(repo),
        "files": {
            str(p.relative_to(repo)): p.read_bytes()
            for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts
        },
    }


def scratch_files(worktree: Path) -> list[str]:
    """Temporary index files left in a worktree's admin dir."""
    admin = Path(run(worktree, "rev-parse", "--path-format=absolute", "--git-dir").strip())
    return [p.name for p in admin.iterdir() if p.name.startswith("stitchwork-index")]


def isolate_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No global or system git config and no identity in the environment."""
    config = tmp_path / "empty-gitconfig"
    config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (*SETUP_IDENTITY, "EMAIL", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_git(monkeypatch, tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    # Resolved once here, so tests compare with the (resolved) paths git reports.
    return init_repo(
        tmp_path.resolve() / "user repo",
        {
            "README.md": "hello\n",
            "src/app.py": "print('app')\n",
            "src/old name.py": "".join(f"line {i}\n" for i in range(40)),
            "docs/guide.md": "guide\n",
            ".gitignore": "*.log\n",
        },
    )


@pytest.fixture
def worktrees(tmp_path: Path) -> Worktrees:
    return Worktrees(tmp_path / "work root", identity=GitIdentity("Agent", "agent@example.test"))


async def test_create_checks_out_target_head_on_a_job_branch_outside_the_checkout(
    repo: Path, worktrees: Worktrees, tmp_path: Path
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")

    assert wt.branch == "stitchwork/job-1"
    assert wt.base_commit == head(repo, "main")
    assert wt.repo == repo
    assert wt.path.parent.parent == worktrees.work_root
    assert wt.path.parent.name.startswith("user repo-")
    assert not wt.path.is_relative_to(repo)
    assert run(wt.path, "symbolic-ref", "HEAD").strip() == "refs/heads/stitchwork/job-1"
    assert (wt.path / "src" / "app.py").read_text() == "print('app')\n"
    assert run(wt.path, "status", "--porcelain") == ""


async def test_create_starts_from_the_target_branch_not_the_users_head(
    repo: Path, worktrees: Worktrees
) -> None:
    run(repo, "checkout", "-q", "-b", "feature")
    write(repo, {"feature.txt": "wip\n"})
    run(repo, "add", "feature.txt")
    run(repo, "commit", "-q", "-m", "feature work")

    wt = await worktrees.create(repo, "job-1", target_branch="main")

    assert wt.base_commit == head(repo, "main") != head(repo, "feature")
    assert not (wt.path / "feature.txt").exists()


async def test_job_lifecycle_never_touches_the_users_checkout(
    repo: Path, worktrees: Worktrees
) -> None:
    write(repo, {"README.md": "edited, not staged\n", "untracked.txt": "mine\n"})
    write(repo, {"docs/guide.md": "staged edit\n"})
    run(repo, "add", "docs/guide.md")
    before = snapshot(repo)

    wt = await worktrees.create(repo, "job-1", target_branch="main")
    assert snapshot(repo) == before
    write(wt.path, {"new.txt": "agent\n", "README.md": "agent edit\n"})
    assert await worktrees.changed_paths(wt)
    assert await worktrees.commit(wt, "agent work")
    await worktrees.keep(wt)
    await worktrees.remove(wt, delete_branch=True)
    await worktrees.gc(repo, set())

    assert snapshot(repo) == before
    # The branch holds the only copy of its commit: neither remove nor gc deletes it...
    assert run(repo, "branch", "--list", "stitchwork/*").strip() == "stitchwork/job-1"
    await worktrees.gc(repo, set(), delete_branches=True)  # ...only gc --force does
    assert run(repo, "branch", "--list", "stitchwork/*") == ""


async def test_create_again_reuses_the_registered_worktree_of_a_retried_job(
    repo: Path, worktrees: Worktrees
) -> None:
    first = await worktrees.create(repo, "job-1", target_branch="main")
    write(first.path, {"progress.txt": "from attempt 1\n"})
    advance(repo, "main")

    again = await worktrees.create(repo, "job-1", target_branch="main")

    assert again == first  # same path, branch and original base although main moved
    assert (again.path / "progress.txt").read_text() == "from attempt 1\n"


async def test_create_after_removal_continues_on_the_kept_branch(
    repo: Path, worktrees: Worktrees
) -> None:
    first = await worktrees.create(repo, "job-1", target_branch="main")
    write(first.path, {"progress.txt": "committed in attempt 1\n"})
    sha = await worktrees.commit(first, "attempt 1")
    await worktrees.remove(first)

    again = await worktrees.create(repo, "job-1", target_branch="main")

    assert again.path == first.path
    assert head(again.path) == sha
    assert again.base_commit == first.base_commit
    assert (again.path / "progress.txt").exists()


async def test_concurrent_creates_and_removes_of_different_jobs_all_succeed(
    repo: Path, worktrees: Worktrees
) -> None:
    # Unserialised, about one `git worktree add` in ten fails here: it reads the admin files
    # of a worktree another add is still writing.
    for round_ in range(3):
        created = await asyncio.gather(
            *(worktrees.create(repo, f"job-{round_}-{i}", target_branch="main") for i in range(8))
        )
        assert len({wt.path for wt in created}) == 8
        assert all((wt.path / "README.md").read_text() == "hello\n" for wt in created)
        registered = {e.path for e in await list_worktrees(repo)}
        assert registered == {repo, *(wt.path for wt in created)}
        await asyncio.gather(*(worktrees.remove(wt, delete_branch=True) for wt in created))
        assert {e.path for e in await list_worktrees(repo)} == {repo}


async def test_create_refuses_what_it_cannot_use(
    repo: Path, worktrees: Worktrees, tmp_path: Path
) -> None:
    plain = tmp_path / "plain dir"
    plain.mkdir()
    with pytest.raises(InvalidRequest, match="not a git repository"):
        await worktrees.create(plain, "job-1", target_branch="main")
    with pytest.raises(InvalidRequest, match="does not exist"):
        await worktrees.create(tmp_path / "missing", "job-1", target_branch="main")
    with pytest.raises(NotFound, match="'nope' does not exist"):
        await worktrees.create(repo, "job-1", target_branch="nope")

    empty = tmp_path / "empty"
    empty.mkdir()
    run(empty, "init", "-q", "-b", "main")
    with pytest.raises(InvalidRequest, match="no commits"):
        await worktrees.create(empty, "job-1", target_branch="main")

    for bad in ("../escape", "_integration", "-rf", "a/b", "x.lock", "a..b", ""):
        with pytest.raises(InvalidRequest, match="cannot name a worktree"):
            await worktrees.create(repo, bad, target_branch="main")

    inside = Worktrees(repo / ".stitchwork")
    with pytest.raises(InvalidRequest, match="outside the user's checkout"):
        await inside.create(repo, "job-1", target_branch="main")
    assert not (repo / ".stitchwork").exists()


async def test_create_refuses_a_foreign_directory_at_the_job_path(
    repo: Path, worktrees: Worktrees
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    stray = wt.path.parent / "job-2"
    stray.mkdir()
    (stray / "keep.txt").write_text("not ours to delete\n")

    with pytest.raises(Conflict, match="not the worktree of job job-2"):
        await worktrees.create(repo, "job-2", target_branch="main")
    assert (stray / "keep.txt").exists()


async def test_changed_paths_reports_every_kind_of_change_against_the_base(
    repo: Path, worktrees: Worktrees
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    assert await worktrees.changed_paths(wt) == []

    write(wt.path, {"committed.txt": "agent committed this\n"})
    run(wt.path, "add", "committed.txt")
    run(wt.path, "commit", "-q", "-m", "agent commit")
    write(wt.path, {"README.md": "modified, unstaged\n", "staged new.txt": "staged\n"})
    run(wt.path, "add", "staged new.txt")
    (wt.path / "docs" / "guide.md").unlink()
    (wt.path / "src" / "old name.py").rename(wt.path / "src" / "naïve new name.py")
    write(wt.path, {"dir with space/ünïcode file.txt": "untracked\n", "debug.log": "ignored\n"})
    index_before = run(wt.path, "ls-files", "--stage", "-z")
    status_before = run(wt.path, "--no-optional-locks", "status", "--porcelain=v2", "-z")

    changes = await worktrees.changed_paths(wt)

    assert changes == [
        PathChange(ChangeKind.MODIFIED, "README.md"),
        PathChange(ChangeKind.ADDED, "committed.txt"),
        PathChange(ChangeKind.ADDED, "dir with space/ünïcode file.txt"),
        PathChange(ChangeKind.DELETED, "docs/guide.md"),
        PathChange(ChangeKind.RENAMED, "src/naïve new name.py", old_path="src/old name.py"),
        PathChange(ChangeKind.ADDED, "staged new.txt"),
    ]
    # The agent's own index and view of its worktree are exactly as it left them.
    assert run(wt.path, "ls-files", "--stage", "-z") == index_before
    assert run(wt.path, "--no-optional-locks", "status", "--porcelain=v2", "-z") == status_before
    assert scratch_files(wt.path) == []


async def test_commit_stages_everything_and_returns_none_when_nothing_changed(
    repo: Path, worktrees: Worktrees
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    assert await worktrees.commit(wt, "nothing yet") is None

    write(wt.path, {"new file.txt": "x\n", "README.md": "changed\n"})
    (wt.path / "docs" / "guide.md").unlink()
    message = "# Add the thing\n\nBody line.\n"
    sha = await worktrees.commit(wt, message)

    assert sha is not None
    assert head(wt.path) == head(repo, "refs/heads/stitchwork/job-1") == sha
    assert run(wt.path, "status", "--porcelain") == ""
    assert run(wt.path, "log", "-1", "--format=%B").strip() == message.strip()
    assert run(wt.path, "log", "-1", "--format=%an <%ae>|%cn").strip() == (
        "Agent <agent@example.test>|Agent"
    )
    assert run(wt.path, "diff", "--name-status", wt.base_commit, sha).splitlines() == [
        "M\tREADME.md",
        "D\tdocs/guide.md",
        "A\tnew file.txt",
    ]
    assert await worktrees.commit(wt, "again") is None
    assert [c.path for c in await worktrees.changed_paths(wt)] == [
        "README.md",
        "docs/guide.md",
        "new file.txt",
    ]
    with pytest.raises(InvalidRequest, match="blank"):
        await worktrees.commit(wt, "  \n")


async def test_remove_deletes_the_worktree_and_only_deletes_the_branch_when_asked(
    repo: Path, worktrees: Worktrees
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    write(wt.path, {"dirty.txt": "uncommitted\n", "build.log": "ignored\n"})

    await worktrees.remove(wt)

    assert not wt.path.exists()
    assert wt.path not in {e.path for e in await list_worktrees(repo)}
    assert head(repo, "refs/heads/stitchwork/job-1") == wt.base_commit
    await worktrees.remove(wt, delete_branch=True)  # already gone: still fine, branch goes
    assert run(repo, "branch", "--list", "stitchwork/*") == ""


async def test_gc_removes_dead_jobs_but_keeps_live_and_kept_worktrees(
    repo: Path, worktrees: Worktrees
) -> None:
    live = await worktrees.create(repo, "live", target_branch="main")
    dead = await worktrees.create(repo, "dead", target_branch="main")
    kept = await worktrees.create(repo, "kept", target_branch="main")
    merged = await worktrees.create(repo, "merged", target_branch="main")
    for wt in (dead, kept, merged):
        write(wt.path, {f"{wt.job_id}.txt": "work\n"})
        await worktrees.commit(wt, f"{wt.job_id} work")
    await worktrees.keep(kept)
    run(repo, "branch", "release", "stitchwork/merged")  # integrated elsewhere
    workdir = live.path.parent
    (workdir / "crashed").mkdir()  # a create that died before git registered it
    (workdir / "_integration").mkdir()

    collected = await worktrees.gc(repo, {"live"})

    assert sorted(collected.removed) == sorted([dead.path, merged.path, workdir / "crashed"])
    assert collected.kept_branches == ["stitchwork/dead"]  # its commit is on no other branch
    assert live.path.exists()
    assert kept.path.exists()
    assert (workdir / "_integration").exists()
    branches = run(repo, "branch", "--list", "stitchwork/*", "--format=%(refname:short)")
    assert branches.split() == ["stitchwork/dead", "stitchwork/kept", "stitchwork/live"]

    collected = await worktrees.gc(repo, {"live"}, include_kept=True, delete_branches=True)

    assert collected.removed == [kept.path]
    assert collected.kept_branches == []
    branches = run(repo, "branch", "--list", "stitchwork/*", "--format=%(refname:short)")
    assert branches.split() == ["stitchwork/live"]
    registered = {e.path for e in await list_worktrees(repo)}
    assert registered == {repo, live.path}


async def test_gc_prunes_worktrees_whose_directory_vanished(
    repo: Path, worktrees: Worktrees
) -> None:
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    shutil.rmtree(wt.path)

    assert (await worktrees.gc(repo, set())).removed == []
    assert {e.path for e in await list_worktrees(repo)} == {repo}
    again = await worktrees.create(repo, "job-1", target_branch="main")
    assert (again.path / "README.md").exists()


async def test_the_users_git_hooks_never_run_in_stitchwork_commands(
    repo: Path, worktrees: Worktrees, tmp_path: Path
) -> None:
    marker = tmp_path / "hook ran"
    hooks = repo / ".git" / "hooks"
    for name, exit_code in (("post-checkout", 0), ("pre-commit", 1), ("commit-msg", 1)):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\necho {name} >> '{marker}'\nexit {exit_code}\n")
        hook.chmod(0o755)

    wt = await worktrees.create(repo, "job-1", target_branch="main")
    write(wt.path, {"new.txt": "x\n"})
    sha = await worktrees.commit(wt, "committed although pre-commit would refuse")

    assert sha == head(wt.path)
    assert not marker.exists()
    run(wt.path, "checkout", "-q", "--detach")  # the agent's own git still runs them
    assert marker.read_text() == "post-checkout\n"


def build_big_repo(path: Path, files: int) -> None:
    """A repository with one commit of ``files`` small files, written by ``git fast-import``
    (far faster than writing the files and running ``git add``)."""
    path.mkdir()
    run(path, "init", "-q", "-b", "main")
    stream = [b"commit refs/heads/main\ncommitter T <t@example.test> 0 +0000\ndata 4\nbig\n"]
    for i in range(files):
        content = f"file {i}\n".encode()
        stream.append(
            f"M 100644 inline d{i // 100:03d}/f{i:05d}.txt\ndata {len(content)}\n".encode()
        )
        stream.append(content + b"\n")
    run(path, "fast-import", "--quiet", input=b"".join(stream))


async def test_create_on_a_repository_of_thousands_of_files_checks_them_all_out(
    tmp_path: Path, worktrees: Worktrees
) -> None:
    # How fast this is on 10,000 files is bench/runner.py's business, not a test's.
    repo = tmp_path / "big"
    build_big_repo(repo, 3_000)
    wt = await worktrees.create(repo, "job-1", target_branch="main")
    assert (wt.path / "d029" / "f02999.txt").read_text() == "file 2999\n"
    tracked = await git("ls-files", "-z", cwd=wt.path)
    assert tracked.stdout.count(b"\0") == 3_000
    assert await worktrees.changed_paths(wt) == []


def test_worktree_job_id_is_its_directory_name(tmp_path: Path) -> None:
    wt = Worktree(tmp_path / "x" / "job-9", "stitchwork/job-9", "0" * 40, tmp_path)
    assert wt.job_id == "job-9"
