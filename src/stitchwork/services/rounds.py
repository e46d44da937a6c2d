"""One execution in memory, and the node and execution moves of one scheduling round.

Moves follow the state machines of ``domain.dag`` and ``domain.executions`` and record their
``task.*``/``execution.*`` events; the stitcher writes them in the round's transaction.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from stitchwork.domain.dag import (
    TERMINAL_NODE_STATUSES,
    NodeStatus,
    after_failure,
    check_node_transition,
)
from stitchwork.domain.events import EventType
from stitchwork.domain.executions import (
    ExecutionStatus,
    check_execution_transition,
    node_owner,
)
from stitchwork.domain.locks import HeldLock
from stitchwork.storage.executions import ExecutionRow, NodeRow

_STATUS_EVENTS = {
    NodeStatus.READY: EventType.TASK_READY,
    NodeStatus.RUNNING: EventType.TASK_STARTED,
    NodeStatus.COMPLETED: EventType.TASK_COMPLETED,
    NodeStatus.FAILED: EventType.TASK_FAILED,
    NodeStatus.SKIPPED: EventType.TASK_SKIPPED,
    NodeStatus.CANCELLED: EventType.TASK_CANCELLED,
}
FINAL_EVENTS = {
    ExecutionStatus.COMPLETED: EventType.EXECUTION_COMPLETED,
    ExecutionStatus.FAILED: EventType.EXECUTION_FAILED,
}


@dataclass
class RunState:
    """One execution in memory: its row, its nodes, and indexes over them."""

    ex: ExecutionRow
    nodes: dict[str, NodeRow]
    waiting: dict[str, int] = field(default_factory=dict)  # pending node -> deps not completed
    ready: set[str] = field(default_factory=set)
    # The ready nodes in start order (priority, then plan order), kept sorted as nodes come
    # and go, so a round never sorts the whole ready set.
    order: list[tuple[int, int, str]] = field(default_factory=list)
    # Ready nodes found blocked, with one holder that blocked them: while that holder still
    # holds locks, the node is still blocked and is not checked again.
    blocked_by: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    open: int = 0  # nodes not ended
    unfinished: int = 0  # ended nodes that did not complete
    counts: dict[str, int] = field(default_factory=dict)  # nodes by status

    def _order_key(self, node_id: str) -> tuple[int, int, str]:
        plan = self.ex.plan
        return (-plan.node(node_id).priority, plan.position(node_id), node_id)

    def add_ready(self, node_id: str) -> None:
        if node_id not in self.ready:
            self.ready.add(node_id)
            bisect.insort(self.order, self._order_key(node_id))

    def drop_ready(self, node_id: str) -> None:
        if node_id in self.ready:
            self.ready.discard(node_id)
            key = self._order_key(node_id)
            del self.order[bisect.bisect_left(self.order, key)]
            self.blocked_by.pop(node_id, None)

    @classmethod
    def build(cls, ex: ExecutionRow, rows: list[NodeRow]) -> RunState:
        run = cls(ex, {n.node_id: n for n in rows})
        plan = ex.plan
        for n in rows:
            run.counts[n.status.value] = run.counts.get(n.status.value, 0) + 1
            if n.status is NodeStatus.READY:
                run.add_ready(n.node_id)
            elif n.status is NodeStatus.RUNNING:
                run.running.add(n.node_id)
            elif n.status is NodeStatus.PENDING:
                run.waiting[n.node_id] = sum(
                    run.nodes[d].status is not NodeStatus.COMPLETED
                    for d in plan.dependencies(n.node_id)
                )
            if n.status in TERMINAL_NODE_STATUSES:
                run.unfinished += n.status is not NodeStatus.COMPLETED
            else:
                run.open += 1
        return run

    def owner(self, node_id: str) -> str:
        return node_owner(self.ex.id, node_id)


@dataclass
class Round:
    """One scheduling decision: the changes it makes to a ``RunState`` in memory, and what
    the stitcher must write when it commits (events, lock releases and acquisitions, jobs to
    cancel)."""

    run: RunState
    now: datetime
    actor: str
    events: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)
    release: set[str] = field(default_factory=set)  # lock owners whose locks go
    acquire: list[tuple[HeldLock, UUID | None, str | None]] = field(default_factory=list)
    cancel_jobs: list[UUID] = field(default_factory=list)
    dirty: dict[str, NodeRow] = field(default_factory=dict)  # nodes to write back
    # Owners in ``release`` already checked for live process groups; those that have one are
    # moved to ``draining`` and keep their locks until the groups are gone.
    checked: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)

    def move(self, node: NodeRow, to: NodeStatus, **payload: Any) -> None:
        run = self.run
        from_ = node.status
        if from_ is to:
            return
        check_node_transition(run.owner(node.node_id), from_, to)
        node.status = to
        self.dirty[node.node_id] = node
        run.counts[from_.value] -= 1
        run.counts[to.value] = run.counts.get(to.value, 0) + 1
        run.drop_ready(node.node_id)
        run.running.discard(node.node_id)
        run.waiting.pop(node.node_id, None)
        if from_ is NodeStatus.RUNNING:
            self.release.add(run.owner(node.node_id))
            node.lease_owner = node.lease_expires_at = None
        if to is NodeStatus.READY:
            run.add_ready(node.node_id)
            node.ready_at = self.now
        elif to is NodeStatus.RUNNING:
            run.running.add(node.node_id)
            run.ex.peak_concurrency = max(run.ex.peak_concurrency, len(run.running))
            node.started_at = self.now
            node.attempt += 1
            if node.blocked_since is not None:
                node.lock_wait_s += (self.now - node.blocked_since).total_seconds()
                node.blocked_since = None
        if to in TERMINAL_NODE_STATUSES:
            node.completed_at = self.now
            node.blocked_since = None
            run.open -= 1
            run.unfinished += to is not NodeStatus.COMPLETED
        self.events.append((_STATUS_EVENTS[to], {"node": node.node_id, **payload}))
        if to is NodeStatus.COMPLETED:
            plan = run.ex.plan
            for dep in plan.dependents(node.node_id):
                if dep in run.waiting:
                    run.waiting[dep] -= 1
                    if run.waiting[dep] == 0 and run.ex.status is not ExecutionStatus.PLANNED:
                        self.move(run.nodes[dep], NodeStatus.READY)

    def fail(self, node: NodeRow, error: str, **payload: Any) -> None:
        node.error = error
        self.move(node, NodeStatus.FAILED, error=error, **payload)
        run = self.run
        statuses = {n.node_id: n.status for n in run.nodes.values()}
        for node_id, status in after_failure(run.ex.plan, statuses, node.node_id).items():
            other = run.nodes[node_id]
            if other.status is NodeStatus.RUNNING and other.job_id is not None:
                self.cancel_jobs.append(other.job_id)
            reason = f"dependency {node.node_id} failed"
            if status is NodeStatus.CANCELLED:
                reason = f"node {node.node_id} failed (failure policy fail_fast)"
            self.move(other, status, reason=reason)

    def cancel_all(self, reason: str) -> None:
        for node in self.run.nodes.values():
            if node.status in TERMINAL_NODE_STATUSES:
                continue
            if node.status is NodeStatus.RUNNING and node.job_id is not None:
                self.cancel_jobs.append(node.job_id)
            self.move(node, NodeStatus.CANCELLED, reason=reason)

    def set_status(self, to: ExecutionStatus, event: EventType, **payload: Any) -> None:
        ex = self.run.ex
        check_execution_transition(ex.id, ex.status, to)
        ex.status = to
        if to is ExecutionStatus.RUNNING and ex.started_at is None:
            ex.started_at = self.now
        if to in FINAL_EVENTS or to is ExecutionStatus.ABORTED:
            ex.completed_at = self.now
        self.events.append((event, {"status": to.value, **payload}))
