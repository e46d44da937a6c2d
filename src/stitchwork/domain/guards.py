"""Guard rails: what an agent profile may do, and whether it may run a job type.

A capability is a ``resource:action`` string in lower case (``repo:write``, ``git:commit``);
``resource:*`` grants every action on that resource. Each job type needs a fixed set of
capabilities (``JOB_TYPE_CAPABILITIES``, checked in that order, so the first missing one is
stable); a job type in ``MERGING_JOB_TYPES`` also needs ``git:merge`` when the merge policy
integrates finished work into the target branch. A job type without an entry is refused: guard
rails fail closed, so a new job type is never run by an agent before someone decides what it needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # repo_config imports this module for the capability grammar
    from stitchwork.domain.repo_config import AgentProfile, MergePolicy

REPO_READ = "repo:read"
REPO_WRITE = "repo:write"
GIT_COMMIT = "git:commit"
GIT_MERGE = "git:merge"
GIT_PUSH = "git:push"
SHELL_EXEC = "shell:exec"
NET_ACCESS = "net:access"
KNOWN_CAPABILITIES = (
    REPO_READ,
    REPO_WRITE,
    GIT_COMMIT,
    GIT_MERGE,
    GIT_PUSH,
    SHELL_EXEC,
    NET_ACCESS,
)
WILDCARD = "*"
# fullmatch, not ``$``: ``$`` would also accept a trailing newline.
CAPABILITY_RE = re.compile(r"[a-z][a-z0-9-]*:(?:[a-z][a-z0-9-]*|\*)")
_KNOWN_RESOURCES = tuple(dict.fromkeys(c.partition(":")[0] for c in KNOWN_CAPABILITIES))

AGENT_TASK = "agent-task"
AGENT_REVIEW = "agent-review"  # a read-only agent run: review, analysis; never merged
AGENT_JOB_TYPES = frozenset({AGENT_TASK, AGENT_REVIEW})
JOB_TYPE_CAPABILITIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        AGENT_TASK: (REPO_READ, REPO_WRITE, GIT_COMMIT, SHELL_EXEC),
        AGENT_REVIEW: (REPO_READ,),
        "shell": (SHELL_EXEC,),
        # Built-in types that touch neither the repository nor the shell.
        "noop": (),
        "sleep": (),
        "emit": (),
    }
)
MERGING_JOB_TYPES = frozenset({AGENT_TASK})


@dataclass(frozen=True, slots=True)
class GuardDecision:
    """The answer to "may this profile run this job?"; ``reason`` is a sentence for people."""

    allowed: bool
    reason: str
    required_capability: str | None = None  # the first missing capability when refused


def is_capability(text: object) -> bool:
    """Whether ``text`` has the capability form ``resource:action`` or ``resource:*``."""
    return isinstance(text, str) and CAPABILITY_RE.fullmatch(text) is not None


def capability_problem(text: object) -> str | None:
    """What is wrong with ``text`` as a profile capability, or ``None`` when it is valid.

    Well-formed but unknown capabilities are refused too: no job type would ever check them, so
    they can only be typos (``repo:wirte``) that would otherwise fail much later, at dispatch.
    """
    if not isinstance(text, str):
        return f"a capability is a string such as {REPO_WRITE!r}, got {text!r}"
    if not is_capability(text):
        return (
            f"{text!r} is not a capability; write resource:action in lower case, "
            f"such as {REPO_WRITE!r} or 'git:*'"
        )
    resource, _, action = text.partition(":")
    if action == WILDCARD:
        if resource in _KNOWN_RESOURCES:
            return None
        return f"unknown resource in {text!r}; known resources: {', '.join(_KNOWN_RESOURCES)}"
    if text in KNOWN_CAPABILITIES:
        return None
    return f"unknown capability {text!r}; known capabilities: {', '.join(KNOWN_CAPABILITIES)}"


def grants(held: Iterable[str], needed: str) -> bool:
    """Whether the capabilities ``held`` include ``needed``, directly or by ``resource:*``."""
    resource = needed.partition(":")[0]
    wildcard = f"{resource}:{WILDCARD}"
    return any(cap in (needed, wildcard) for cap in held)


def required_capabilities(
    job_type: str, merge: MergePolicy | None = None
) -> tuple[str, ...] | None:
    """The capabilities ``job_type`` needs in check order, or ``None`` for an unknown type.

    Args:
        job_type: the job's type, such as ``agent-task``.
        merge: the repository's merge policy; ``None`` means the job's work is not integrated
            by this dispatch, so ``git:merge`` is not needed.
    """
    base = JOB_TYPE_CAPABILITIES.get(job_type)
    if base is None:
        return None
    if job_type in MERGING_JOB_TYPES and merge is not None and merge.integrates:
        return (*base, GIT_MERGE)
    return base


def check_dispatch(
    job_type: str, profile: AgentProfile, *, merge: MergePolicy | None = None
) -> GuardDecision:
    """Whether ``profile`` may run a job of ``job_type``; pure, so it can be asked anywhere.

    Args:
        job_type: the job's type.
        profile: the agent profile the job would run with.
        merge: the repository's merge policy (see ``required_capabilities``).

    Returns:
        An allowed decision, or a refusal naming the profile, the job type and the first
        missing capability in ``required_capabilities`` order.
    """
    needed = required_capabilities(job_type, merge)
    if needed is None:
        known = ", ".join(sorted(JOB_TYPE_CAPABILITIES))
        return GuardDecision(
            allowed=False,
            reason=(
                f"profile {profile.name!r} may not run job type {job_type!r}: the job type has "
                f"no guard-rail entry (known job types: {known})"
            ),
        )
    for capability in needed:
        if not grants(profile.capabilities, capability):
            why = ""
            if capability == GIT_MERGE and merge is not None:
                why = (
                    f", which the merge strategy {str(merge.strategy)!r} needs to integrate "
                    f"the work into {merge.target_branch!r}"
                )
            return GuardDecision(
                allowed=False,
                reason=(
                    f"profile {profile.name!r} may not run job type {job_type!r}: it lacks the "
                    f"capability {capability!r}{why}; add it to the profile's capabilities"
                ),
                required_capability=capability,
            )
    listed = ", ".join(needed) or "none"
    return GuardDecision(
        allowed=True,
        reason=(
            f"profile {profile.name!r} may run job type {job_type!r}: it holds every "
            f"capability the job type needs ({listed})"
        ),
    )
