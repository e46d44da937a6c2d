"""Pure DAG decisions for executions: node states, readiness, start order, failures, waves.

Every function takes a validated ``Plan`` (see ``plans.validate_plan``) and a snapshot of node
statuses; a node missing from the snapshot counts as pending. Nothing here waits or stores: the
executions service applies the returned decisions in its transactions.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from stitchwork.domain.plans import FailurePolicy, Plan, PlanNode
from stitchwork.errors import InvalidRequest, InvalidTransition


class NodeStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


TERMINAL_NODE_STATUSES = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.CANCELLED, NodeStatus.SKIPPED}
)

# skipped: a dependency failed (continue policy); cancelled: the execution was aborted or failed
# fast. A running node is never skipped: it is cancelled, and its job with it.
NODE_TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.PENDING: frozenset({NodeStatus.READY, NodeStatus.SKIPPED, NodeStatus.CANCELLED}),
    NodeStatus.READY: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED}),
    NodeStatus.RUNNING: frozenset({NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.CANCELLED}),
    **{status: frozenset() for status in TERMINAL_NODE_STATUSES},
}

ExecutionOutcome = Literal["completed", "failed"]


def can_transition_node(from_: NodeStatus, to: NodeStatus) -> bool:
    return to in NODE_TRANSITIONS[from_]


def check_node_transition(node_id: object, from_: NodeStatus, to: NodeStatus) -> None:
    """Raise ``InvalidTransition`` unless ``from_ -> to`` is a legal node transition."""
    if not can_transition_node(from_, to):
        if from_ in TERMINAL_NODE_STATUSES:
            reason = f"the node already ended ({from_.value})"
        else:
            allowed = ", ".join(sorted(s.value for s in NODE_TRANSITIONS[from_]))
            reason = f"from {from_.value} a node may move to {allowed}"
        raise InvalidTransition(node_id, from_.value, to.value, reason=reason)


def _status(statuses: Mapping[str, NodeStatus], node_id: str) -> NodeStatus:
    return statuses.get(node_id, NodeStatus.PENDING)


def newly_ready(plan: Plan, statuses: Mapping[str, NodeStatus]) -> list[str]:
    """Pending nodes whose dependencies all completed, in plan order."""
    completed = NodeStatus.COMPLETED
    return [
        node.id
        for node in plan.nodes
        if _status(statuses, node.id) is NodeStatus.PENDING
        and all(statuses.get(dep) is completed for dep in plan.dependencies(node.id))
    ]


def start_order(plan: Plan, ready: Iterable[str], *, boosted: Iterable[str] = ()) -> list[str]:
    """The order in which to try starting ``ready`` nodes.

    Boosted nodes (blocked too long; the caller lists them longest-waiting first) come first in
    the caller's order, then the rest by priority (higher first), then plan order. Ids are
    de-duplicated; boosted ids that are not ready are ignored. Unknown ids raise ``NotFound``.
    """
    rank = {node_id: i for i, node_id in enumerate(dict.fromkeys(boosted))}

    def key(node_id: str) -> tuple[int, int, int]:
        if node_id in rank:
            return (0, rank[node_id], 0)
        return (1, -plan.node(node_id).priority, plan.position(node_id))

    return sorted(dict.fromkeys(ready), key=key)


def after_failure(
    plan: Plan, statuses: Mapping[str, NodeStatus], failed: str
) -> dict[str, NodeStatus]:
    """The status changes a failed node causes (the failed node itself not included).

    Under ``continue`` every transitive dependent that has not ended is skipped and independent
    branches go on. Under ``fail_fast`` every other node that has not ended is cancelled,
    running ones included (the caller cancels their jobs). Changes come in plan order.
    """
    plan.node(failed)  # NotFound for an unknown id
    if plan.failure_policy is FailurePolicy.FAIL_FAST:
        affected = {node.id for node in plan.nodes if node.id != failed}
    else:
        affected = set()
        stack = [failed]
        while stack:
            for dependent in plan.dependents(stack.pop()):
                if dependent not in affected:
                    affected.add(dependent)
                    stack.append(dependent)
    changes: dict[str, NodeStatus] = {}
    for node in plan.nodes:
        status = _status(statuses, node.id)
        if node.id not in affected or status in TERMINAL_NODE_STATUSES:
            continue
        # A running dependent of a failed node cannot exist while statuses are consistent; if
        # one does, it is cancelled, because running -> skipped is not a legal transition.
        skip = plan.failure_policy is FailurePolicy.CONTINUE and status is not NodeStatus.RUNNING
        changes[node.id] = NodeStatus.SKIPPED if skip else NodeStatus.CANCELLED
    return changes


def execution_outcome(plan: Plan, statuses: Mapping[str, NodeStatus]) -> ExecutionOutcome | None:
    """``None`` while any node has not ended; then ``completed`` if every node completed,
    else ``failed`` (a failed node under ``continue`` too). Apply ``after_failure`` first."""
    seen = [_status(statuses, node.id) for node in plan.nodes]
    if any(status not in TERMINAL_NODE_STATUSES for status in seen):
        return None
    return "completed" if all(s is NodeStatus.COMPLETED for s in seen) else "failed"


@dataclass(frozen=True, slots=True)
class Waves:
    """A schedule preview: ``waves[i]`` can run together once every earlier wave finished."""

    waves: list[list[str]]
    critical_path: list[str]
    critical_path_length: int  # nodes on the critical path: no schedule has fewer waves


def compute_waves(
    plan: Plan, agents: int, conflicts: Callable[[PlanNode, PlanNode], bool]
) -> Waves:
    """Simulate a schedule in which every node takes one wave.

    Each wave takes, in ``start_order``, the nodes whose dependencies are all in earlier waves,
    at most ``min(agents, plan.concurrency)`` of them and none that ``conflicts`` with one
    already in the wave (``conflicts(in_wave, candidate)``; it should be symmetric). Greedy:
    a node that does not fit waits for the next wave, so every wave holds at least one node.

    Raises:
        InvalidRequest: ``agents`` is not a whole number of at least 1.
    """
    if isinstance(agents, bool) or not isinstance(agents, int) or agents < 1:
        raise InvalidRequest(f"agents must be at least 1, not {agents!r}", field="agents")
    width = min(agents, plan.concurrency)
    waiting = {node.id: len(plan.dependencies(node.id)) for node in plan.nodes}
    available = [
        (-node.priority, i, node.id) for i, node in enumerate(plan.nodes) if not waiting[node.id]
    ]
    heapq.heapify(available)
    waves: list[list[str]] = []
    while available:
        wave: list[PlanNode] = []
        deferred = []
        while available and len(wave) < width:
            entry = heapq.heappop(available)
            candidate = plan.node(entry[2])
            if any(conflicts(member, candidate) for member in wave):
                deferred.append(entry)
            else:
                wave.append(candidate)
        for entry in deferred:
            heapq.heappush(available, entry)
        waves.append([node.id for node in wave])
        for node in wave:
            for dependent in plan.dependents(node.id):
                waiting[dependent] -= 1
                if not waiting[dependent]:
                    priority = plan.node(dependent).priority
                    heapq.heappush(available, (-priority, plan.position(dependent), dependent))
    path = critical_path(plan)
    return Waves(waves=waves, critical_path=path, critical_path_length=len(path))


def critical_path(plan: Plan) -> list[str]:
    """The longest dependency chain by node count, first node first; among equally long
    chains the one ending (and, at each step back, continuing) earliest in plan order."""
    length: dict[str, int] = {}
    previous: dict[str, str | None] = {}

    def rank(node_id: str) -> tuple[int, int]:
        return (length[node_id], -plan.position(node_id))

    for node_id in plan.topological_order():
        best = max(plan.dependencies(node_id), key=rank, default=None)
        length[node_id] = 1 + (length[best] if best is not None else 0)
        previous[node_id] = best
    path: list[str] = []
    end: str | None = max((node.id for node in plan.nodes), key=rank)
    while end is not None:
        path.append(end)
        end = previous[end]
    path.reverse()
    return path
