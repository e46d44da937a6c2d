"""DAG decisions: node transitions, readiness, start order, failure policies, outcome, waves."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest

from stitchwork.domain.dag import (
    NODE_TRANSITIONS,
    TERMINAL_NODE_STATUSES,
    NodeStatus,
    after_failure,
    can_transition_node,
    check_node_transition,
    compute_waves,
    critical_path,
    execution_outcome,
    newly_ready,
    start_order,
)
from stitchwork.domain.plans import FailurePolicy, Plan, PlanNode, parse_plan, validate_plan
from stitchwork.errors import InvalidRequest, InvalidTransition, NotFound

FIXTURE = Path(__file__).parent.parent / "fixtures" / "milestones.md"

PENDING, READY, RUNNING = NodeStatus.PENDING, NodeStatus.READY, NodeStatus.RUNNING
DONE, FAILED = NodeStatus.COMPLETED, NodeStatus.FAILED
CANCELLED, SKIPPED = NodeStatus.CANCELLED, NodeStatus.SKIPPED

# Written out from ARCHITECTURE.md, independently of NODE_TRANSITIONS.
LEGAL = {
    (PENDING, READY),
    (READY, RUNNING),
    (RUNNING, DONE),
    (RUNNING, FAILED),
    (PENDING, SKIPPED),
    (READY, SKIPPED),
    (PENDING, CANCELLED),
    (READY, CANCELLED),
    (RUNNING, CANCELLED),
}
ILLEGAL = [pair for pair in itertools.product(NodeStatus, repeat=2) if pair not in LEGAL]


def _ids(pair: tuple[NodeStatus, NodeStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def make_plan(
    edges: str = "",
    *,
    nodes: str = "",
    priorities: dict[str, int] | None = None,
    policy: FailurePolicy = FailurePolicy.FAIL_FAST,
    concurrency: int = 4,
) -> Plan:
    """``make_plan("a>b a>c", nodes="d")``: nodes in order of first mention, then ``nodes``."""
    pairs = [tuple(edge.split(">")) for edge in edges.split()]
    ids = dict.fromkeys([n for pair in pairs for n in pair] + nodes.split())
    priorities = priorities or {}
    return validate_plan(
        Plan(
            nodes=tuple(PlanNode(id=n, priority=priorities.get(n, 0)) for n in ids),
            edges=tuple((a, b) for a, b in pairs),
            concurrency=concurrency,
            failure_policy=policy,
        )
    )


# --- transitions ---------------------------------------------------------------------------


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_ids)
def test_legal_node_transition_is_allowed(pair: tuple[NodeStatus, NodeStatus]) -> None:
    assert can_transition_node(*pair)
    check_node_transition("n1", *pair)  # must not raise


@pytest.mark.parametrize("pair", ILLEGAL, ids=_ids)
def test_illegal_node_transition_raises_with_fields(pair: tuple[NodeStatus, NodeStatus]) -> None:
    assert not can_transition_node(*pair)
    with pytest.raises(InvalidTransition) as info:
        check_node_transition("n1", *pair)
    assert (info.value.entity_id, info.value.from_, info.value.to) == (
        "n1",
        *(s.value for s in pair),
    )


def test_terminal_statuses_have_no_way_out() -> None:
    assert {DONE, FAILED, CANCELLED, SKIPPED} == TERMINAL_NODE_STATUSES
    assert all(not NODE_TRANSITIONS[s] for s in TERMINAL_NODE_STATUSES)
    assert [s.value for s in NodeStatus] == [
        "pending",
        "ready",
        "running",
        "completed",
        "failed",
        "cancelled",
        "skipped",
    ]


# --- readiness and order -------------------------------------------------------------------


def test_roots_are_ready_at_first_and_missing_statuses_count_as_pending() -> None:
    plan = make_plan("a>c b>c", nodes="d")
    assert newly_ready(plan, {}) == ["a", "b", "d"]


def test_node_is_ready_only_when_every_dependency_completed() -> None:
    plan = make_plan("a>c b>c")
    assert newly_ready(plan, {"a": DONE, "b": RUNNING}) == []
    assert newly_ready(plan, {"a": DONE, "b": FAILED}) == []
    assert newly_ready(plan, {"a": DONE, "b": SKIPPED}) == []
    assert newly_ready(plan, {"a": DONE, "b": DONE}) == ["c"]


def test_only_pending_nodes_are_newly_ready() -> None:
    plan = make_plan(nodes="a b c d")
    statuses = {"a": READY, "b": RUNNING, "c": CANCELLED}
    assert newly_ready(plan, statuses) == ["d"]


def test_start_order_is_priority_then_plan_order() -> None:
    plan = make_plan(nodes="a b c d", priorities={"c": 5, "d": 5, "a": -1})
    assert start_order(plan, ["a", "b", "c", "d"]) == ["c", "d", "b", "a"]
    assert start_order(plan, ["d", "a", "c", "b", "d"]) == ["c", "d", "b", "a"]


def test_boosted_nodes_go_first_in_the_callers_order() -> None:
    plan = make_plan(nodes="a b c d", priorities={"a": 9})
    order = start_order(plan, ["a", "b", "c", "d"], boosted=["d", "b", "zzz-not-ready"])
    assert order == ["d", "b", "a", "c"]


def test_start_order_rejects_unknown_ids() -> None:
    with pytest.raises(NotFound):
        start_order(make_plan(nodes="a"), ["a", "nope"])


# --- failures and outcome ------------------------------------------------------------------


def test_continue_skips_transitive_dependents_and_leaves_other_branches() -> None:
    # a -> b -> c -> d, b -> e; x -> y is independent; f depends on a and on independent x.
    plan = make_plan("a>b b>c c>d b>e x>y a>f x>f", policy=FailurePolicy.CONTINUE)
    statuses = {"a": DONE, "b": FAILED, "x": RUNNING, "f": PENDING}
    assert after_failure(plan, statuses, "b") == {"c": SKIPPED, "d": SKIPPED, "e": SKIPPED}


def test_continue_leaves_dependents_that_already_ended() -> None:
    plan = make_plan("a>b a>c c>d", policy=FailurePolicy.CONTINUE)
    statuses = {"a": FAILED, "b": SKIPPED, "c": READY}
    assert after_failure(plan, statuses, "a") == {"c": SKIPPED, "d": SKIPPED}


def test_fail_fast_cancels_every_node_that_has_not_ended_running_ones_included() -> None:
    plan = make_plan("a>b c>d", nodes="e f")
    statuses = {"a": FAILED, "c": RUNNING, "d": PENDING, "e": DONE, "f": READY}
    assert after_failure(plan, statuses, "a") == {
        "b": CANCELLED,
        "c": CANCELLED,
        "d": CANCELLED,
        "f": CANCELLED,
    }


def test_after_failure_of_an_unknown_node_raises() -> None:
    with pytest.raises(NotFound):
        after_failure(make_plan(nodes="a"), {}, "ghost")


def test_outcome_is_open_while_anything_can_still_run() -> None:
    plan = make_plan("a>b", nodes="c", policy=FailurePolicy.CONTINUE)
    assert execution_outcome(plan, {}) is None
    assert execution_outcome(plan, {"a": DONE, "b": RUNNING, "c": DONE}) is None
    assert execution_outcome(plan, {"a": FAILED, "b": SKIPPED, "c": RUNNING}) is None


def test_outcome_is_completed_only_when_every_node_completed() -> None:
    plan = make_plan("a>b", nodes="c")
    assert execution_outcome(plan, {"a": DONE, "b": DONE, "c": DONE}) == "completed"


def test_outcome_is_failed_when_all_ended_and_one_failed_even_under_continue() -> None:
    plan = make_plan("a>b", nodes="c", policy=FailurePolicy.CONTINUE)
    statuses = {"a": FAILED, "c": RUNNING}
    statuses |= after_failure(plan, statuses, "a")
    assert execution_outcome(plan, statuses) is None
    statuses["c"] = DONE
    assert execution_outcome(plan, statuses) == "failed"


def test_outcome_after_fail_fast_is_failed_at_once() -> None:
    plan = make_plan("a>b", nodes="c d")
    statuses = {"a": FAILED, "c": RUNNING}
    statuses |= after_failure(plan, statuses, "a")
    assert execution_outcome(plan, statuses) == "failed"


def test_outcome_with_cancellations_but_no_failure_is_not_completed() -> None:
    plan = make_plan(nodes="a b")
    assert execution_outcome(plan, {"a": DONE, "b": CANCELLED}) == "failed"


# --- waves and critical path ---------------------------------------------------------------


def _never(a: PlanNode, b: PlanNode) -> bool:
    return False


def test_chain_takes_one_wave_per_node() -> None:
    waves = compute_waves(make_plan("a>b b>c"), 4, _never)
    assert waves.waves == [["a"], ["b"], ["c"]]
    assert waves.critical_path == ["a", "b", "c"]
    assert waves.critical_path_length == 3


def test_waves_are_as_wide_as_agents_and_concurrency_allow() -> None:
    plan = make_plan(nodes="a b c d e", concurrency=3)
    assert compute_waves(plan, 2, _never).waves == [["a", "b"], ["c", "d"], ["e"]]
    assert compute_waves(plan, 10, _never).waves == [["a", "b", "c"], ["d", "e"]]


def test_waves_take_higher_priority_first() -> None:
    plan = make_plan(nodes="a b c", priorities={"c": 3})
    assert compute_waves(plan, 2, _never).waves == [["c", "a"], ["b"]]


def test_conflicting_nodes_never_share_a_wave_and_others_fill_in() -> None:
    plan = make_plan(nodes="a b c d")
    same_file = {"a", "b"}

    def conflicts(x: PlanNode, y: PlanNode) -> bool:
        return x.id in same_file and y.id in same_file

    assert compute_waves(plan, 2, conflicts).waves == [["a", "c"], ["b", "d"]]


def test_diamond_waves_and_critical_path() -> None:
    plan = make_plan("a>b a>c b>d c>d d>e", nodes="z")
    waves = compute_waves(plan, 4, _never)
    assert waves.waves == [["a", "z"], ["b", "c"], ["d"], ["e"]]
    assert waves.critical_path == ["a", "b", "d", "e"]  # b: earlier in plan order than c


def test_critical_path_of_independent_nodes_is_one_node() -> None:
    assert critical_path(make_plan(nodes="a b c")) == ["a"]


def test_invalid_agent_count_is_rejected() -> None:
    for agents in (0, -1, True):
        with pytest.raises(InvalidRequest) as info:
            compute_waves(make_plan(nodes="a"), agents, _never)
        assert info.value.field == "agents"


def test_fixture_waves_with_two_agents_respect_every_dependency() -> None:
    plan = parse_plan(FIXTURE.read_text())
    waves = compute_waves(plan, 2, _never)
    wave_of = {node_id: i for i, wave in enumerate(waves.waves) for node_id in wave}
    assert sorted(wave_of) == sorted(node.id for node in plan.nodes)
    assert all(len(wave) <= 2 for wave in waves.waves)
    assert all(wave_of[frm] < wave_of[to] for frm, to in plan.edges)
    assert waves.critical_path_length == 7
    assert waves.critical_path[0] == "201"
    assert waves.critical_path[-1] == "218"
    assert len(waves.waves) >= waves.critical_path_length


def test_ten_thousand_nodes_validate_and_answer_readiness_fast() -> None:
    rnd = random.Random(7)
    nodes = tuple(PlanNode(id=f"n{i}", claims=(f"src/m{i % 300}/**",)) for i in range(10_000))
    edges = tuple(
        (f"n{j}", f"n{i}") for i in range(1, 10_000) for j in rnd.sample(range(i), min(i, 3))
    )
    started = time.perf_counter()
    plan = validate_plan(Plan(nodes=nodes, edges=edges))
    statuses = {f"n{i}": DONE for i in range(5_000)}
    ready = newly_ready(plan, statuses)
    elapsed = time.perf_counter() - started
    assert all(statuses.get(dep) is DONE for node_id in ready for dep in plan.dependencies(node_id))
    assert ready
    assert all(int(node_id[1:]) >= 5_000 for node_id in ready)
    # Measured ~0.3 s; the bound is loose for busy machines but catches quadratic code.
    assert elapsed < 2.0
