"""Guard rails: the capability grammar, what each job type needs, dispatch decisions and the
403 error built from a refusal."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stitchwork.api.errors import status_for
from stitchwork.domain.guards import (
    JOB_TYPE_CAPABILITIES,
    KNOWN_CAPABILITIES,
    GuardDecision,
    capability_problem,
    check_dispatch,
    grants,
    is_capability,
    required_capabilities,
)
from stitchwork.domain.repo_config import (
    AgentAdapter,
    AgentProfile,
    MergePolicy,
    MergeStrategy,
    RepoConfig,
)
from stitchwork.errors import Forbidden, GuardRailDenied

AGENT_TASK_NEEDS = ("repo:read", "repo:write", "git:commit", "shell:exec")
MERGE = MergePolicy("main", MergeStrategy.MERGE)
REBASE = MergePolicy("trunk", MergeStrategy.REBASE)
BRANCH_ONLY = MergePolicy("main", MergeStrategy.BRANCH_ONLY)


def _profile(*capabilities: str, name: str = "bot") -> AgentProfile:
    return AgentProfile(name, AgentAdapter.SCRIPT, (), frozenset(capabilities))


def _oracle(text: str) -> bool:
    """The capability form, written without a regular expression."""

    def ident(part: str) -> bool:
        allowed = string.ascii_lowercase + string.digits + "-"
        return bool(part) and part[0] in string.ascii_lowercase and all(c in allowed for c in part)

    parts = text.split(":")
    return len(parts) == 2 and ident(parts[0]) and (parts[1] == "*" or ident(parts[1]))


# --- the capability grammar ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [*KNOWN_CAPABILITIES, "repo:*", "git:*", "a:b", "issue-tracker:comment-2", "x1:y"]
)
def test_well_formed_capabilities(text: str) -> None:
    assert is_capability(text)


@pytest.mark.parametrize(
    "text",
    [
        *("", "repo", "repo:", ":read", "repo:read:x", "Repo:read", "repo:Read", "1repo:read"),
        *("repo:1read", "-repo:read", "repo:-read", "repo_x:read", "repo:*x", "repo:**", "*:read"),
        *("*:*", "*", "repo:read\n", " repo:read", "repo :read", "répo:read", "repo:rëad"),
    ],
)
def test_malformed_capabilities(text: str) -> None:
    assert not is_capability(text)


@pytest.mark.parametrize("value", [None, 1, b"repo:read", ["repo:read"]])
def test_non_strings_are_not_capabilities(value: object) -> None:
    assert not is_capability(value)
    assert capability_problem(value) == (
        f"a capability is a string such as 'repo:write', got {value!r}"
    )


@given(
    st.one_of(
        st.text(alphabet="az09-:*A_ \n", max_size=14),
        st.from_regex(r"[a-z][a-z0-9-]{0,6}:([a-z][a-z0-9-]{0,6}|\*)", fullmatch=True),
    )
)
def test_is_capability_matches_the_grammar_exactly(text: str) -> None:
    assert is_capability(text) == _oracle(text)


@pytest.mark.parametrize("text", [*KNOWN_CAPABILITIES, "repo:*", "git:*", "shell:*", "net:*"])
def test_known_capabilities_and_known_wildcards_have_no_problem(text: str) -> None:
    assert capability_problem(text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "Repo:Read",
            "'Repo:Read' is not a capability; write resource:action in lower case, "
            "such as 'repo:write' or 'git:*'",
        ),
        (
            "repo:wirte",
            "unknown capability 'repo:wirte'; known capabilities: repo:read, repo:write, "
            "git:commit, git:merge, git:push, shell:exec, net:access",
        ),
        ("gti:*", "unknown resource in 'gti:*'; known resources: repo, git, shell, net"),
    ],
)
def test_capability_problems_say_what_is_wrong_and_the_right_form(text: str, problem: str) -> None:
    assert capability_problem(text) == problem


def test_grants_exact_and_wildcard_capabilities_only_on_the_same_resource() -> None:
    assert grants({"repo:read"}, "repo:read")
    assert not grants({"repo:read"}, "repo:write")
    assert grants({"git:*"}, "git:merge")
    assert grants(["repo:read", "git:*"], "git:push")
    assert not grants({"git:*"}, "repo:read")
    assert not grants({"gi:*"}, "git:merge")  # no prefix matching
    assert not grants(set(), "repo:read")


# --- what each job type needs --------------------------------------------------------------


def test_job_type_table() -> None:
    assert dict(JOB_TYPE_CAPABILITIES) == {
        "agent-task": AGENT_TASK_NEEDS,
        "agent-review": ("repo:read",),
        "shell": ("shell:exec",),
        "noop": (),
        "sleep": (),
        "emit": (),
    }
    with pytest.raises(TypeError):
        JOB_TYPE_CAPABILITIES["agent-task"] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("job_type", "merge", "needed"),
    [
        ("agent-task", None, AGENT_TASK_NEEDS),
        ("agent-task", MERGE, (*AGENT_TASK_NEEDS, "git:merge")),
        ("agent-task", REBASE, (*AGENT_TASK_NEEDS, "git:merge")),
        ("agent-task", BRANCH_ONLY, AGENT_TASK_NEEDS),
        ("agent-review", MERGE, ("repo:read",)),
        ("shell", MERGE, ("shell:exec",)),
        ("noop", MERGE, ()),
        ("deploy", None, None),
        ("deploy", MERGE, None),
    ],
)
def test_required_capabilities(
    job_type: str, merge: MergePolicy | None, needed: tuple[str, ...] | None
) -> None:
    assert required_capabilities(job_type, merge) == needed


# --- dispatch decisions --------------------------------------------------------------------


def test_a_profile_with_every_needed_capability_may_run_the_job() -> None:
    decision = check_dispatch("agent-task", _profile(*AGENT_TASK_NEEDS, "git:merge"), merge=MERGE)
    assert decision == GuardDecision(
        allowed=True,
        reason=(
            "profile 'bot' may run job type 'agent-task': it holds every capability the job type "
            "needs (repo:read, repo:write, git:commit, shell:exec, git:merge)"
        ),
        required_capability=None,
    )


def test_the_first_missing_capability_in_table_order_is_reported() -> None:
    decision = check_dispatch("agent-task", _profile("shell:exec", "repo:read", name="claude"))
    assert decision == GuardDecision(
        allowed=False,
        reason=(
            "profile 'claude' may not run job type 'agent-task': it lacks the capability "
            "'repo:write'; add it to the profile's capabilities"
        ),
        required_capability="repo:write",
    )


def test_a_missing_merge_capability_names_the_strategy_and_target_branch() -> None:
    decision = check_dispatch("agent-task", _profile(*AGENT_TASK_NEEDS), merge=REBASE)
    assert not decision.allowed
    assert decision.required_capability == "git:merge"
    assert decision.reason == (
        "profile 'bot' may not run job type 'agent-task': it lacks the capability 'git:merge', "
        "which the merge strategy 'rebase' needs to integrate the work into 'trunk'; add it to "
        "the profile's capabilities"
    )


def test_branch_only_needs_no_merge_capability() -> None:
    assert check_dispatch("agent-task", _profile(*AGENT_TASK_NEEDS), merge=BRANCH_ONLY).allowed


def test_wildcards_grant_the_whole_resource() -> None:
    profile = _profile("repo:*", "git:*", "shell:*")
    assert check_dispatch("agent-task", profile, merge=MERGE).allowed


def test_a_read_only_profile_may_review_but_not_write() -> None:
    reviewer = _profile("repo:read", name="reviewer")
    assert check_dispatch("agent-review", reviewer).allowed
    decision = check_dispatch("agent-task", reviewer)
    assert (decision.allowed, decision.required_capability) == (False, "repo:write")
    shell = check_dispatch("shell", reviewer)
    assert (shell.allowed, shell.required_capability) == (False, "shell:exec")


def test_job_types_that_need_nothing_are_allowed_for_any_profile() -> None:
    decision = check_dispatch("noop", _profile())
    assert decision.allowed
    assert decision.reason.endswith("needs (none)")


def test_unknown_job_types_are_refused() -> None:
    decision = check_dispatch("deploy", _profile(*KNOWN_CAPABILITIES, "repo:*"))
    assert not decision.allowed
    assert decision.required_capability is None
    assert decision.reason.startswith(
        "profile 'bot' may not run job type 'deploy': the job type has no guard-rail entry"
    )
    assert "agent-task" in decision.reason


def test_the_default_script_profile_runs_and_merges_agent_tasks() -> None:
    config = RepoConfig.default()
    script = config.profiles[config.default_profile]
    assert check_dispatch("agent-task", script).allowed
    assert check_dispatch("agent-task", script, merge=BRANCH_ONLY).allowed
    assert check_dispatch("agent-task", script, merge=config.merge).allowed
    assert not check_dispatch("agent-task", script, merge=config.merge).required_capability
    assert "git:push" not in script.capabilities  # nothing beyond what the task needs


capability_sets = st.frozensets(
    st.sampled_from([*KNOWN_CAPABILITIES, "repo:*", "git:*", "shell:*", "net:*"])
)
merges = st.one_of(st.none(), st.sampled_from([MERGE, REBASE, BRANCH_ONLY]))


@given(capability_sets, st.sampled_from([*JOB_TYPE_CAPABILITIES, "deploy"]), merges)
def test_a_dispatch_is_allowed_iff_every_needed_capability_is_granted(
    held: frozenset[str], job_type: str, merge: MergePolicy | None
) -> None:
    decision = check_dispatch(job_type, _profile(*held), merge=merge)
    needed = required_capabilities(job_type, merge)
    if needed is None:
        assert not decision.allowed
        return
    missing = [c for c in needed if c not in held and f"{c.split(':')[0]}:*" not in held]
    assert decision.allowed == (not missing)
    assert decision.required_capability == (missing[0] if missing else None)
    if missing:
        assert f"'{missing[0]}'" in decision.reason
        assert "'bot'" in decision.reason
        assert f"'{job_type}'" in decision.reason


# --- the error -----------------------------------------------------------------------------


def test_guard_rail_denied_carries_the_decision_as_fields() -> None:
    decision = check_dispatch("agent-task", _profile("repo:read"))
    error = GuardRailDenied(decision)
    assert isinstance(error, Forbidden)
    assert error.decision is decision
    assert error.message == decision.reason
    assert error.title == "Guard rail denied"
    assert error.fields == {
        "allowed": False,
        "reason": decision.reason,
        "required_capability": "repo:write",
    }
    assert status_for(error) == 403


def test_guard_rail_denied_refuses_an_allowed_decision() -> None:
    with pytest.raises(ValueError, match="not a denial"):
        GuardRailDenied(check_dispatch("noop", _profile()))
