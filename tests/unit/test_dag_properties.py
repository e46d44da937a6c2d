"""Properties of DAG scheduling and plan validation on random graphs (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stitchwork.domain.dag import (
    TERMINAL_NODE_STATUSES,
    NodeStatus,
    after_failure,
    compute_waves,
    critical_path,
    newly_ready,
)
from stitchwork.domain.plans import FailurePolicy, Plan, PlanNode, validate_plan
from stitchwork.errors import CycleError


@dataclass(frozen=True)
class Case:
    plan: Plan
    resources: dict[str, frozenset[int]]  # nodes sharing a resource conflict

    def conflicts(self, a: PlanNode, b: PlanNode) -> bool:
        return bool(self.resources[a.id] & self.resources[b.id])


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 14) -> Case:
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    ids = [f"n{i}" for i in range(n)]
    # Edges follow a random topological order, so plan order and dependency order differ.
    topo = draw(st.permutations(ids))
    pairs = [(topo[i], topo[j]) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), max_size=3 * n)) if pairs else []
    priorities = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    resources = draw(st.lists(st.frozensets(st.integers(0, 4), max_size=2), min_size=n, max_size=n))
    plan = Plan(
        nodes=tuple(PlanNode(id=i, priority=p) for i, p in zip(ids, priorities, strict=True)),
        edges=tuple(edges),
        concurrency=draw(st.integers(1, 6)),
        failure_policy=draw(st.sampled_from(FailurePolicy)),
    )
    return Case(validate_plan(plan), dict(zip(ids, resources, strict=True)))


def _longest_chain(plan: Plan) -> int:
    """Brute force: the longest path by node count, by exploring every path."""
    best = 0
    stack = [(node.id, 1) for node in plan.nodes]
    while stack:
        node_id, length = stack.pop()
        best = max(best, length)
        stack.extend((d, length + 1) for d in plan.dependents(node_id))
    return best


def _descendants(plan: Plan, node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for d in plan.dependents(stack.pop()):
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


@given(dags(), st.integers(1, 5))
def test_waves_place_every_node_once_after_its_dependencies(case: Case, agents: int) -> None:
    plan = case.plan
    waves = compute_waves(plan, agents, case.conflicts)
    placed = [node_id for wave in waves.waves for node_id in wave]
    assert sorted(placed) == sorted(node.id for node in plan.nodes)
    assert len(placed) == len(set(placed))
    wave_of = {node_id: i for i, wave in enumerate(waves.waves) for node_id in wave}
    assert all(wave_of[frm] < wave_of[to] for frm, to in plan.edges)


@given(dags(), st.integers(1, 5))
def test_waves_respect_width_and_conflicts(case: Case, agents: int) -> None:
    waves = compute_waves(case.plan, agents, case.conflicts)
    for wave in waves.waves:
        assert 1 <= len(wave) <= min(agents, case.plan.concurrency)
        for i, a in enumerate(wave):
            for b in wave[i + 1 :]:
                assert not case.conflicts(case.plan.node(a), case.plan.node(b))


@given(dags())
def test_critical_path_is_a_longest_real_chain(case: Case) -> None:
    plan = case.plan
    path = critical_path(plan)
    assert all(path[i] in plan.dependencies(path[i + 1]) for i in range(len(path) - 1))
    assert len(path) == _longest_chain(plan)
    waves = compute_waves(plan, 100, case.conflicts)
    assert waves.critical_path == path
    assert len(waves.waves) >= waves.critical_path_length == len(path)


@given(dags(), st.data())
def test_newly_ready_is_exactly_pending_nodes_with_completed_dependencies(
    case: Case, data: st.DataObject
) -> None:
    plan = case.plan
    statuses = {
        node.id: data.draw(st.sampled_from(NodeStatus), label=node.id) for node in plan.nodes
    }
    expected = [
        node.id
        for node in plan.nodes
        if statuses[node.id] is NodeStatus.PENDING
        and all(statuses[d] is NodeStatus.COMPLETED for d in plan.dependencies(node.id))
    ]
    assert newly_ready(plan, statuses) == expected


@given(dags(), st.data())
def test_after_failure_changes_only_nodes_that_have_not_ended(
    case: Case, data: st.DataObject
) -> None:
    plan = case.plan
    failed = data.draw(st.sampled_from([node.id for node in plan.nodes]), label="failed")
    statuses = {
        node.id: data.draw(st.sampled_from(NodeStatus), label=node.id) for node in plan.nodes
    }
    statuses[failed] = NodeStatus.FAILED
    changes = after_failure(plan, statuses, failed)
    open_nodes = {n for n, s in statuses.items() if s not in TERMINAL_NODE_STATUSES}
    if plan.failure_policy is FailurePolicy.FAIL_FAST:
        assert changes == dict.fromkeys(
            [node.id for node in plan.nodes if node.id in open_nodes], NodeStatus.CANCELLED
        )
    else:
        assert set(changes) == _descendants(plan, failed) & open_nodes
        for node_id, status in changes.items():
            running = statuses[node_id] is NodeStatus.RUNNING
            assert status is (NodeStatus.CANCELLED if running else NodeStatus.SKIPPED)


@st.composite
def digraphs(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(min_value=1, max_value=8))
    ids = [f"v{i}" for i in range(n)]
    pairs = [(a, b) for a in ids for b in ids if a != b]
    edges = draw(st.lists(st.sampled_from(pairs), max_size=2 * n)) if pairs else []
    return ids, edges


def _has_cycle(ids: list[str], edges: list[tuple[str, str]]) -> bool:
    """Brute force: some node reaches itself."""
    for start in ids:
        seen: set[str] = set()
        stack = [b for a, b in edges if a == start]
        while stack:
            node = stack.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(b for a, b in edges if a == node)
    return False


@given(digraphs())
def test_validate_plan_rejects_exactly_the_cyclic_graphs(
    graph: tuple[list[str], list[tuple[str, str]]],
) -> None:
    ids, edges = graph
    plan = Plan(nodes=tuple(PlanNode(id=i) for i in ids), edges=tuple(edges))
    if not _has_cycle(ids, edges):
        assert validate_plan(plan).edges == tuple(dict.fromkeys(edges))
        return
    with pytest.raises(CycleError) as info:
        validate_plan(plan)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1 >= 2
    assert all((cycle[i], cycle[i + 1]) in edges for i in range(len(cycle) - 1))
