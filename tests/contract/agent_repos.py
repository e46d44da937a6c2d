"""Real temporary git repositories for agent-task tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

ENV = {
    "GIT_AUTHOR_NAME": "tester",
    "GIT_AUTHOR_EMAIL": "tester@localhost",
    "GIT_COMMITTER_NAME": "tester",
    "GIT_COMMITTER_EMAIL": "tester@localhost",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# A gate that fails while any tracked text file says TODO.
NO_TODO_CONFIG = """
max_gate_attempts = 3

[gates.no-todo]
command = "! grep -rn TODO --include=*.txt ."
timeout = 30

[quality_rails]
agent-task = ["no-todo"]
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str], *, config: str | None = NO_TODO_CONFIG) -> Path:
    """A repository whose ``main`` holds ``files`` (and ``stitchwork.toml``); the user's
    checkout is on ``dev``, so ``main`` can be integrated into."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    contents = dict(files)
    if config is not None:
        contents["stitchwork.toml"] = config
    for name, text in contents.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    git(path, "switch", "-q", "-c", "dev")
    return path


def log(repo: Path, branch: str = "main") -> list[str]:
    """Subjects of ``branch``'s first-parent history, newest first."""
    return git(repo, "log", "--format=%s", branch).splitlines()


def show(repo: Path, ref: str, path: str) -> str:
    return git(repo, "show", f"{ref}:{path}")


def human_commit(repo: Path, where: Path, path: str, content: str) -> None:
    """Someone lands a commit on main meanwhile (through a worktree of their own)."""
    git(repo, "worktree", "add", "-q", str(where), "main")
    (where / path).write_text(content)
    git(where, "commit", "-q", "-am", "human edit")
    git(repo, "worktree", "remove", str(where))
