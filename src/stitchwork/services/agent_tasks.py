"""Agent tasks before they run: the repository's config, and the guard rails at dispatch.

An ``agent-task`` job is refused on submission (and when a plan is created) when its
repository is missing, its ``stitchwork.toml`` is invalid, its agent profile is unknown, or
the profile lacks a capability the task needs; the API answers the last with 403 and the
structured denial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitchwork.domain.guards import AGENT_TASK, MERGING_JOB_TYPES, check_dispatch
from stitchwork.domain.repo_config import (
    CONFIG_FILE,
    AgentAdapter,
    AgentProfile,
    RepoConfig,
    load_repo_config,
)
from stitchwork.errors import GuardRailDenied, InvalidRepoConfig, InvalidRequest


def read_repo_config(repo_root: Path) -> RepoConfig:
    """The config of the repository at ``repo_root``; the default when it has no file.

    Raises:
        InvalidRepoConfig: the file is unreadable, not UTF-8, a symlink leading out of the
            repository, or invalid.
    """
    path = repo_root / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        return RepoConfig.default()
    source = str(path)
    if not path.resolve().is_relative_to(repo_root.resolve()):
        raise InvalidRepoConfig(source, None, "is a symlink that leads out of the repository")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # tolerate an editor's byte-order mark
    except OSError as exc:
        raise InvalidRepoConfig(source, None, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 (bad byte at offset {exc.start}); TOML files are UTF-8"
        raise InvalidRepoConfig(source, None, message) from None
    return load_repo_config(text, source=source)


def check_agent_task(
    payload: dict[str, Any], agent_profile: str | None, *, job_type: str = AGENT_TASK
) -> tuple[RepoConfig, AgentProfile]:
    """The repository config and agent profile of a validated agent job's payload
    (``agent-task``, or the read-only ``agent-review``).

    The config is read from the repository's checkout here; the runner reads it again from
    the target branch in the task's own worktree, so an agent cannot weaken its own gates.

    Raises:
        InvalidRequest: no git repository at ``payload.repo``, an unknown profile, or a
            script profile without a script.
        InvalidRepoConfig: the repository's ``stitchwork.toml`` is invalid.
        GuardRailDenied: the profile lacks a capability the task needs.
    """
    repo = Path(payload["repo"])
    if not (repo / ".git").exists():
        raise InvalidRequest(
            f"{repo} is not a git repository (no .git); give the path of a checkout",
            field="payload.repo",
        )
    config = read_repo_config(repo)
    profile = allowed_profile(config, payload.get("profile") or agent_profile, job_type)
    if profile.adapter is AgentAdapter.SCRIPT and payload.get("script") is None:
        raise InvalidRequest(
            f"profile {profile.name!r} is the script agent: give payload.script, a list of "
            'actions such as [{"write": "a.txt", "content": "hi"}]',
            field="payload.script",
        )
    return config, profile


def allowed_profile(config: RepoConfig, name: str | None, job_type: str) -> AgentProfile:
    """The profile ``name`` (default: the config's) if the guard rails let it run
    ``job_type``.

    Raises:
        InvalidRequest: the config defines no such profile.
        GuardRailDenied: the profile lacks a capability the job type needs.
    """
    name = name or config.default_profile
    profile = config.profiles.get(name)
    if profile is None:
        known = ", ".join(sorted(config.profiles))
        raise InvalidRequest(
            f"unknown agent profile {name!r}; {CONFIG_FILE} defines: {known}",
            field="payload.profile",
        )
    merge = config.merge if job_type in MERGING_JOB_TYPES else None
    decision = check_dispatch(job_type, profile, merge=merge)
    if not decision.allowed:
        raise GuardRailDenied(decision)
    return profile
