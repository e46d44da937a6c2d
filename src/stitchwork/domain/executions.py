"""Executions: their states, and the pure decisions of the scheduler (who starts, who is
deadlocked). The executions service applies these decisions in its transactions."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from stitchwork.domain.locks import LockConflict, LockMode, LockTable
from stitchwork.domain.plans import Plan
from stitchwork.errors import InvalidTransition


class ExecutionStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"


TERMINAL_EXECUTION_STATUSES = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.ABORTED}
)
ACTIVE_EXECUTION_STATUSES = frozenset({ExecutionStatus.RUNNING, ExecutionStatus.PAUSED})

EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.PLANNED: frozenset({ExecutionStatus.RUNNING, ExecutionStatus.ABORTED}),
    ExecutionStatus.RUNNING: frozenset(
        {
            ExecutionStatus.PAUSED,
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.ABORTED,
        }
    ),
    ExecutionStatus.PAUSED: frozenset({ExecutionStatus.RUNNING, ExecutionStatus.ABORTED}),
    **{status: frozenset() for status in TERMINAL_EXECUTION_STATUSES},
}


class Dispatch(StrEnum):
    """Who runs an execution's nodes."""

    JOBS = "jobs"  # the scheduler starts one runner job per node
    PULL = "pull"  # an external orchestrator takes nodes with ``next`` and reports back


def check_execution_transition(
    execution_id: object, from_: ExecutionStatus, to: ExecutionStatus
) -> None:
    """Raise ``InvalidTransition`` unless ``from_ -> to`` is a legal execution transition."""
    if to in EXECUTION_TRANSITIONS[from_]:
        return
    if from_ in TERMINAL_EXECUTION_STATUSES:
        reason = f"the execution already ended ({from_.value})"
    else:
        allowed = ", ".join(sorted(s.value for s in EXECUTION_TRANSITIONS[from_]))
        reason = f"from {from_.value} an execution may move to {allowed}"
    raise InvalidTransition(execution_id, from_.value, to.value, reason=reason)


def node_owner(execution_id: object, node_id: str) -> str:
    """The lock owner name of one node of one execution."""
    return f"{execution_id}/{node_id}"


@dataclass(frozen=True, slots=True)
class Starts:
    """What one scheduling round decided."""

    starts: list[str]
    # Ready nodes that could not lock their claims, with the first conflict found (enough to
    # decide). A node held back by a starved node's reservation names that node as holder.
    blocked: dict[str, list[LockConflict]] = field(default_factory=dict)


def choose_starts(
    plan: Plan,
    ordered_ready: Iterable[str],
    free_slots: int,
    locks: LockTable,
    owner: Callable[[str], str],
    *,
    boosted: Collection[str] = (),
    reserved: LockTable | None = None,
) -> Starts:
    """Start ready nodes in ``ordered_ready`` order while slots are free and claims lock.

    ``locks`` is the repository's lock table and is updated with what the started nodes
    acquire (all of a node's claims or none). A blocked node is skipped, so nodes behind it can
    start; but a *boosted* node (blocked for too long) that stays blocked reserves its claims,
    so no later node takes what it waits for and it gets them at the next release. ``reserved``
    holds the reservations of other executions' starved nodes on the same repository.
    """
    reservations = reserved if reserved is not None else LockTable()
    starts: list[str] = []
    blocked: dict[str, list[LockConflict]] = {}
    for node_id in ordered_ready:
        if free_slots <= 0:
            break
        claims = claims_of(plan, node_id)
        who = owner(node_id)
        held_back = [] if node_id in boosted else reservations.conflicts(who, claims, first=True)
        if held_back:
            blocked[node_id] = held_back
            continue
        conflicts = locks.try_acquire(who, claims, first=True)
        if conflicts:
            blocked[node_id] = conflicts
            if node_id in boosted:
                reservations.try_acquire(who, claims)
            continue
        starts.append(node_id)
        free_slots -= 1
    return Starts(starts, blocked)


@dataclass(frozen=True, slots=True)
class Deadlock:
    """Nothing runs, nodes are ready, and none of them can ever lock its claims."""

    blocked: dict[str, list[str]]  # ready node -> owners holding what it needs
    holders: list[str]
    cycle: list[str] | None  # executions waiting on each other, first repeated last

    def payload(self) -> dict[str, object]:
        return {"blocked": self.blocked, "holders": self.holders, "cycle": self.cycle}


def find_deadlock(
    *,
    running: int,
    ready: Collection[str],
    blocked: Mapping[str, Sequence[LockConflict]],
    live_holders: Collection[str],
    waits_for: Mapping[str, Collection[str]] | None = None,
    start: str | None = None,
) -> Deadlock | None:
    """A real deadlock, or None.

    Only when this execution runs nothing, has ready nodes, every ready node is blocked by
    locks, and no holder of those locks is live (a live holder is a running node that will
    finish and release). ``waits_for`` (execution -> executions holding what it needs) and
    ``start`` (this execution) find the cycle, if the waiting is mutual.
    """
    if running or not ready or set(ready) - set(blocked):
        return None
    holders = {c.holder for conflicts in blocked.values() for c in conflicts}
    if not holders or holders & set(live_holders):
        return None
    cycle = find_cycle(waits_for, start) if waits_for is not None and start else None
    return Deadlock(
        blocked={
            node: sorted({c.holder for c in conflicts}) for node, conflicts in blocked.items()
        },
        holders=sorted(holders),
        cycle=cycle,
    )


def find_cycle(graph: Mapping[str, Collection[str]], start: str) -> list[str] | None:
    """A cycle through ``start`` in ``graph`` (iterative DFS), first node repeated last."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def claims_of(plan: Plan, node_id: str) -> list[tuple[str, LockMode]]:
    """A node's claims, each with the node's lock mode."""
    node = plan.node(node_id)
    return [(claim, node.mode) for claim in node.claims]


@dataclass(frozen=True, slots=True)
class ExecutionNode:
    """A snapshot of one node of an execution."""

    node_id: str
    ordinal: int
    status: str
    job_id: UUID | None
    attempt: int
    error: str | None
    result: object | None
    lease_expires_at: datetime | None
    ready_at: datetime | None
    blocked_since: datetime | None
    lock_wait_s: float
    contentions: int
    started_at: datetime | None
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Execution:
    """A snapshot of one execution (its plan, its state and its nodes)."""

    id: UUID
    workspace_id: UUID
    name: str | None
    status: ExecutionStatus
    dispatch: Dispatch
    repo: str
    plan: Plan
    concurrency: int
    version: int
    last_event_seq: int
    peak_concurrency: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    last_event_at: datetime
    nodes: tuple[ExecutionNode, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)  # nodes by status
