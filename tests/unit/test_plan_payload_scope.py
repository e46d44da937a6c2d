"""A node's payload may repeat its claims, mode and the plan's repo, never change them: the
scheduler locks what the node says, and the job must run with exactly that."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stitchwork.domain.locks import LockMode
from stitchwork.domain.plans import Plan, PlanNode, parse_plan, validate_plan
from stitchwork.errors import InvalidClaim, InvalidRequest
from stitchwork.services.stitcher import node_job

REPO = "/srv/checkouts/shop"


def _plan(payload: dict[str, Any], *, repo: str | None = REPO, **node: Any) -> Plan:
    nodes = [
        {"id": "first", "claims": ["src/"]},
        {"id": "second"},
        {"id": "edit", "claims": ["docs/a.md"], "mode": "write", "payload": payload, **node},
    ]
    return parse_plan(json.dumps({"repo": repo, "nodes": nodes}), format="json")


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"claims": ["**"]}, "nodes[2].payload.claims", ["claims on the node itself"]),
        ({"claims": []}, "nodes[2].payload.claims", ["claims on the node itself"]),
        (
            {"claims": ["docs/a.md", "docs/b.md"]},
            "nodes[2].payload.claims",
            ["payload.claims differs"],
        ),
        ({"claims": "docs/a.md"}, "nodes[2].payload.claims", ["must be a list"]),
        ({"mode": "read"}, "nodes[2].payload.mode", ["mode on the node itself"]),
        ({"mode": "WRITE"}, "nodes[2].payload.mode", ["payload.mode differs"]),
        ({"mode": None}, "nodes[2].payload.mode", ["payload.mode differs"]),
        ({"repo": "/elsewhere"}, "nodes[2].payload.repo", ["repo on the plan"]),
        ({"repo": None}, "nodes[2].payload.repo", ["payload.repo differs"]),
    ],
)
def test_a_payload_that_changes_what_the_node_locks_is_refused_naming_the_field(
    payload: dict[str, Any], field: str, words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as info:
        _plan(payload)

    assert info.value.field == field
    for word in words:
        assert word in info.value.message


def test_an_invalid_claim_in_the_payload_is_located_in_the_payload() -> None:
    with pytest.raises(InvalidClaim) as info:
        _plan({"claims": ["docs/a.md", "../etc"]})
    assert info.value.field == "nodes[2].payload.claims[1]"


def test_a_payload_repo_without_a_plan_repo_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        _plan({"repo": REPO}, repo=None)
    assert info.value.field == "nodes[2].payload.repo"


@pytest.mark.parametrize(
    "payload",
    [
        {"claims": ["docs/a.md"]},
        {"claims": ["./docs/a.md", "docs//a.md"]},  # the same claim, normalised
        {"mode": "write"},
        {"repo": REPO},
        {"claims": ["docs/a.md"], "mode": "write", "repo": REPO, "prompt": "fix"},
    ],
)
def test_a_payload_that_repeats_the_nodes_own_values_is_accepted(payload: dict[str, Any]) -> None:
    node = _plan(payload).node("edit")
    assert node.payload == payload
    assert node.claims == ("docs/a.md",)


def test_claims_compare_as_normalised_sets() -> None:
    node = _plan({"claims": ["b/", "a/", "./a/"]}, claims=["a/", "b/"]).node("edit")
    assert node.claims == ("a/", "b/")


def test_validate_plan_refuses_a_built_plan_the_same_way() -> None:
    node = PlanNode(id="edit", claims=("docs/a.md",), payload={"claims": ["**"]})
    with pytest.raises(InvalidRequest) as info:
        validate_plan(Plan(nodes=(node,)))
    assert info.value.field == "nodes[0].payload.claims"


def test_the_message_never_quotes_a_huge_payload() -> None:
    huge = [f"docs/{i}/{'x' * 200}.md" for i in range(256)]
    with pytest.raises(InvalidRequest) as info:
        _plan({"claims": huge})
    assert len(info.value.message) < 300


def test_an_agent_job_runs_with_the_nodes_claims_mode_and_the_executions_repo() -> None:
    node = PlanNode(
        id="edit",
        job_type="agent-task",
        claims=("docs/a.md",),
        payload={"prompt": "fix", "claims": ["docs/a.md"], "mode": "write", "repo": REPO},
    )
    job = node_job(node, "/srv/checkouts/other")
    assert job.payload == {
        "prompt": "fix",
        "claims": ["docs/a.md"],
        "mode": "write",
        "repo": "/srv/checkouts/other",
    }
    # Built by hand past validation, a payload still cannot widen what the job may touch.
    sneaky = PlanNode(
        id="edit",
        job_type="agent-task",
        claims=("docs/a.md",),
        mode=LockMode.READ,
        payload={"claims": ["**"], "mode": "write", "repo": "/"},
    )
    assert node_job(sneaky, REPO).payload == {
        "claims": ["docs/a.md"],
        "mode": "read",
        "repo": REPO,
    }


def test_other_job_types_keep_their_payload_as_written() -> None:
    node = PlanNode(id="nap", job_type="sleep", payload={"seconds": 1})
    assert node_job(node, REPO).payload == {"seconds": 1}


HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nodes": [{"id": HUGE}]}, "nodes[0].id"),
        ({"nodes": [{"id": "a", "mode": HUGE}]}, "nodes[0].mode"),
        ({"nodes": [{"id": "a", "priority": HUGE}]}, "nodes[0].priority"),
        ({"nodes": [{"id": "a", "claims": [[HUGE]]}]}, "nodes[0].claims[0]"),
        ({"nodes": [{"id": "a", "payload": {"claims": [[HUGE]]}}]}, "nodes[0].payload.claims[0]"),
        ({"nodes": [{"id": "a", "metadata": {"k": [HUGE]}}]}, "nodes[0].metadata.k"),
        ({"nodes": [{"id": "a"}], "edges": [["a", HUGE]]}, "edges[0]"),
        ({"nodes": [{"id": "a", "depends_on": [[HUGE]]}]}, "nodes[0].depends_on[0]"),
        ({"nodes": [{"id": "a"}], "concurrency": [HUGE]}, "concurrency"),
    ],
)
def test_messages_never_quote_a_huge_value_whole(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_plan(json.dumps(data), format="json")
    assert info.value.field == field
    assert len(info.value.message) < 400
