"""Create, read, control and inspect executions (DAG plans of jobs)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.clock import Clock
from stitchwork.domain.claims import overlaps, repo_root_of
from stitchwork.domain.dag import NodeStatus, Waves, compute_waves, start_order
from stitchwork.domain.events import Event, EventType
from stitchwork.domain.executions import (
    Dispatch,
    Execution,
    ExecutionStatus,
)
from stitchwork.domain.locks import HeldLock, LockMode, LockTable, modes_conflict
from stitchwork.domain.plans import Plan, PlanNode, parse_plan, validate_plan
from stitchwork.errors import InvalidRequest, NotFound
from stitchwork.services.jobs import JobService
from stitchwork.services.stitcher import Grant, NodeOutcome, Stitcher, node_job
from stitchwork.storage.executions import ExecutionRow, NodeRow, SqlExecutionStore
from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.locks import lock_key, lock_scope
from stitchwork.storage.rows import EventWriter
from stitchwork.storage.types import new_id

log = structlog.get_logger(__name__)

DEFAULT_REPO = "default"
MAX_NEXT = 1000  # nodes one pull call may take or report
FOREIGN_OWNER = "another workspace"  # a lock on a shared checkout held by another workspace

# Called with each job type a plan will run as jobs; raises to refuse the plan.
JobTypeCheck = Callable[[str], None]


def nodes_conflict(a: PlanNode, b: PlanNode, *, repo_root: Path | None = None) -> bool:
    """Whether two nodes may not run at the same time: overlapping claims, conflicting modes
    (with ``repo_root``, its tree decides which literal claims are directories)."""
    if not modes_conflict(a.mode, b.mode):
        return False
    return any(overlaps(x, y, repo_root=repo_root) for x in a.claims for y in b.claims)


def plan_waves(plan: Plan, agents: int, *, repo_root: Path | None = None) -> Waves:
    """The waves preview of ``plan``; ``repo_root`` classifies claims as the scheduler does
    for an execution on that checkout."""
    return compute_waves(plan, agents, lambda a, b: nodes_conflict(a, b, repo_root=repo_root))


@dataclass(frozen=True, slots=True)
class Debug:
    execution: Execution
    ready: list[str]  # in the order the scheduler would try them
    running: list[dict[str, Any]]
    locks: list[dict[str, Any]]  # the repository's whole lock table
    wait_for: dict[str, list[str]]  # blocked node -> lock owners it waits for
    events: list[Event]


class ExecutionService:
    def __init__(
        self,
        writer: EventWriter,
        store: SqlExecutionStore,
        job_store: SqlJobStore,
        jobs: JobService,
        stitcher: Stitcher,
        clock: Clock,
    ) -> None:
        self.writer = writer
        self.store = store
        self.job_store = job_store
        self.jobs = jobs
        self.stitcher = stitcher
        self.clock = clock

    # -- create -----------------------------------------------------------------------------

    async def create(
        self,
        workspace_id: UUID,
        plan: Plan,
        *,
        actor: str,
        dispatch: Dispatch = Dispatch.JOBS,
        repo: str | None = None,
        start: bool = False,
        check_job_type: JobTypeCheck | None = None,
    ) -> Execution:
        """Store a validated plan as a ``planned`` execution (and start it if asked).

        Every node's job type and payload are checked here, before anything runs; with
        ``check_job_type``, so is the caller's right to run each job type (a plan is a batch of
        submissions: it must not run a type its author could not submit). Pull-mode nodes run
        outside stitchwork, so their types are labels and are not checked.
        """
        repo = repo or plan.repo or DEFAULT_REPO
        lock_key(workspace_id, repo)  # refuses a name too long to lock before anything is stored
        if dispatch is Dispatch.JOBS and check_job_type is not None:
            for job_type in sorted({node.job_type for node in plan.nodes}):
                check_job_type(job_type)
        if dispatch is Dispatch.JOBS:
            for i, node in enumerate(plan.nodes):
                try:
                    self.jobs.spec(node_job(node, repo))
                except InvalidRequest as exc:
                    raise InvalidRequest(
                        f"node {node.id!r}: {exc.message}", field=f"nodes[{i}].{exc.field}"
                    ) from exc
        now = self.clock.now()
        ex = ExecutionRow(
            id=new_id(),
            workspace_id=workspace_id,
            name=plan.name,
            status=ExecutionStatus.PLANNED,
            dispatch=dispatch,
            repo=repo,
            plan=plan,
            concurrency=plan.concurrency,
            version=1,
            last_event_seq=0,
            peak_concurrency=0,
            created_at=now,
            started_at=None,
            completed_at=None,
            updated_at=now,
            last_event_at=now,
        )
        nodes = [
            NodeRow(node_id=node.id, ordinal=i, status=NodeStatus.PENDING)
            for i, node in enumerate(plan.nodes)
        ]
        async with self.writer.write() as tx:
            await self.store.insert(tx, ex, nodes)
            await self.store.write_events(
                tx,
                ex,
                [
                    (
                        EventType.EXECUTION_PLANNED,
                        {
                            "status": "planned",
                            "name": plan.name,
                            "nodes": len(plan.nodes),
                            "edges": len(plan.edges),
                            "concurrency": plan.concurrency,
                            "dispatch": dispatch.value,
                            "repo": ex.repo,
                        },
                    )
                ],
                actor=actor,
                now=now,
            )
            await self.store.save(tx, ex, ())
            self.stitcher.adopt(tx, ex, nodes)
        log.info("execution_planned", execution_id=str(ex.id), nodes=len(plan.nodes))
        if start:
            return await self.start(workspace_id, ex.id, actor=actor)
        return ex.snapshot(nodes)

    async def import_plan(
        self,
        workspace_id: UUID,
        text: str,
        *,
        actor: str,
        format: str | None = None,
        dispatch: Dispatch = Dispatch.JOBS,
        repo: str | None = None,
        concurrency: int | None = None,
        start: bool = False,
        check_job_type: JobTypeCheck | None = None,
    ) -> Execution:
        """Create an execution from a Markdown milestone table, YAML or JSON document."""
        plan = parse_plan(text, format=format)
        if concurrency is not None:
            plan = _with_concurrency(plan, concurrency)
        return await self.create(
            workspace_id,
            plan,
            actor=actor,
            dispatch=dispatch,
            repo=repo,
            start=start,
            check_job_type=check_job_type,
        )

    # -- read -------------------------------------------------------------------------------

    async def get(self, workspace_id: UUID, execution_id: UUID) -> Execution:
        async with self.store.db.read() as conn:
            ex = await self.store.find(conn, execution_id, workspace_id=workspace_id)
            if ex is None:
                raise NotFound(
                    f"execution {execution_id} not found", execution_id=str(execution_id)
                )
            nodes = await self.store.load_nodes(conn, execution_id)
        return ex.snapshot(nodes)

    async def list_executions(
        self, workspace_id: UUID, *, status: ExecutionStatus | None = None, limit: int = 50
    ) -> list[Execution]:
        async with self.store.db.read() as conn:
            rows = await self.store.list_executions(conn, workspace_id, status=status, limit=limit)
            counts = await self.store.node_counts(conn, [r.id for r in rows])
        return [r.snapshot(counts=counts.get(r.id, {})) for r in rows]

    async def waves(self, workspace_id: UUID, execution_id: UUID, agents: int | None) -> Waves:
        ex = await self.get(workspace_id, execution_id)
        return plan_waves(ex.plan, agents or ex.concurrency, repo_root=repo_root_of(ex.repo))

    async def events(
        self, workspace_id: UUID, execution_id: UUID, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        await self.get(workspace_id, execution_id)
        return await self.store.list_events(execution_id, after=after, limit=limit)

    # -- control ----------------------------------------------------------------------------

    async def start(self, workspace_id: UUID, execution_id: UUID, *, actor: str) -> Execution:
        return await self._change(
            workspace_id,
            execution_id,
            ExecutionStatus.RUNNING,
            actor,
            expect=ExecutionStatus.PLANNED,
        )

    async def resume(self, workspace_id: UUID, execution_id: UUID, *, actor: str) -> Execution:
        return await self._change(
            workspace_id,
            execution_id,
            ExecutionStatus.RUNNING,
            actor,
            expect=ExecutionStatus.PAUSED,
        )

    async def pause(self, workspace_id: UUID, execution_id: UUID, *, actor: str) -> Execution:
        return await self._change(workspace_id, execution_id, ExecutionStatus.PAUSED, actor)

    async def abort(self, workspace_id: UUID, execution_id: UUID, *, actor: str) -> Execution:
        return await self._change(workspace_id, execution_id, ExecutionStatus.ABORTED, actor)

    async def _change(
        self,
        workspace_id: UUID,
        execution_id: UUID,
        to: ExecutionStatus,
        actor: str,
        *,
        expect: ExecutionStatus | None = None,
    ) -> Execution:
        ex = await self.stitcher.change(execution_id, workspace_id, to, actor=actor, expect=expect)
        log.info("execution_changed", execution_id=str(execution_id), status=ex.status.value)
        return ex

    # -- pull mode --------------------------------------------------------------------------

    async def next_node(
        self, workspace_id: UUID, execution_id: UUID, *, lease_owner: str, actor: str
    ) -> Grant | None:
        grants = await self.next_nodes(
            workspace_id, execution_id, lease_owner=lease_owner, actor=actor
        )
        return grants[0] if grants else None

    async def next_nodes(
        self,
        workspace_id: UUID,
        execution_id: UUID,
        *,
        lease_owner: str,
        actor: str,
        limit: int = 1,
    ) -> list[Grant]:
        if not 1 <= limit <= MAX_NEXT:
            raise InvalidRequest(f"limit must be from 1 to {MAX_NEXT}", field="limit")
        return await self.stitcher.next_nodes(
            execution_id, workspace_id, lease_owner=lease_owner, actor=actor, limit=limit
        )

    async def complete_node(
        self,
        workspace_id: UUID,
        execution_id: UUID,
        node_id: str,
        *,
        actor: str,
        result: Any = None,
        lease_owner: str | None = None,
    ) -> Execution:
        return await self.finish_nodes(
            workspace_id,
            execution_id,
            [NodeOutcome(node_id, ok=True, result=result)],
            actor=actor,
            lease_owner=lease_owner,
        )

    async def fail_node(
        self,
        workspace_id: UUID,
        execution_id: UUID,
        node_id: str,
        *,
        actor: str,
        error: str | None = None,
        lease_owner: str | None = None,
    ) -> Execution:
        return await self.finish_nodes(
            workspace_id,
            execution_id,
            [NodeOutcome(node_id, ok=False, error=error)],
            actor=actor,
            lease_owner=lease_owner,
        )

    async def finish_nodes(
        self,
        workspace_id: UUID,
        execution_id: UUID,
        outcomes: Sequence[NodeOutcome],
        *,
        actor: str,
        lease_owner: str | None = None,
    ) -> Execution:
        """Pull mode: report nodes as completed or failed, all in one transaction."""
        if not 1 <= len(outcomes) <= MAX_NEXT:
            raise InvalidRequest(f"report 1 to {MAX_NEXT} nodes at once", field="nodes")
        if len({o.node_id for o in outcomes}) != len(outcomes):
            raise InvalidRequest("a node is reported twice", field="nodes")
        return await self.stitcher.finish_nodes(
            execution_id, workspace_id, outcomes, actor=actor, lease_owner=lease_owner
        )

    # -- locks ------------------------------------------------------------------------------

    # A repository named by a workspace is that workspace's own lock table; an absolute path
    # is shared by every workspace (``lock_key``).

    async def held_locks(self, workspace_id: UUID, repo: str) -> list[dict[str, Any]]:
        """The repository's lock table as the workspace sees it: every held claim with its
        owner and mode (on a shared checkout, another workspace's nodes without their ids)."""
        async with self.store.db.read() as conn:
            return await self._visible_locks(conn, workspace_id, lock_key(workspace_id, repo))

    async def _visible_locks(
        self, conn: AsyncConnection, workspace_id: UUID, key: str
    ) -> list[dict[str, Any]]:
        store = self.stitcher.locks.store
        rows = [dict(r) for r in await store.held_locks(conn, key)]
        if lock_scope(key)[0] is not None:
            return rows  # a named repository: every row is this workspace's
        ids = {r["execution_id"] for r in rows if r["execution_id"] is not None}
        owners = await store.execution_workspaces(conn, ids)
        for row in rows:
            if row["execution_id"] is not None and owners.get(row["execution_id"]) != workspace_id:
                row.update(owner=FOREIGN_OWNER, execution_id=None, node_id=None)
        return rows

    async def hold(
        self, workspace_id: UUID, repo: str, name: str, claims: list[tuple[str, LockMode]]
    ) -> list[HeldLock]:
        """Hold claims by hand (``hold:<name>``); see ``RepoLocks.hold``."""
        held = await self.stitcher.locks.hold(lock_key(workspace_id, repo), name, claims)
        log.info("claims_held", repo=repo, name=name, claims=len(held))
        return held

    async def release_hold(self, workspace_id: UUID, repo: str, name: str) -> int:
        count = await self.stitcher.locks.release_hold(lock_key(workspace_id, repo), name)
        log.info("hold_released", repo=repo, name=name, claims=count)
        return count

    # -- inspection -------------------------------------------------------------------------

    async def debug(self, workspace_id: UUID, execution_id: UUID) -> Debug:
        ex = await self.get(workspace_id, execution_id)
        async with self.store.db.read() as conn:
            held = await self._visible_locks(conn, workspace_id, lock_key(workspace_id, ex.repo))
        ready = [n.node_id for n in ex.nodes if n.status == NodeStatus.READY.value]
        table = LockTable(repo_root=repo_root_of(ex.repo))
        for row in held:
            table.try_acquire(row["owner"], [(row["claim"], LockMode(row["mode"]))])
        wait_for: dict[str, list[str]] = {}
        for node_id in ready:
            node = ex.plan.node(node_id)
            owner = f"{ex.id}/{node_id}"
            conflicts = table.conflicts(owner, [(c, node.mode) for c in node.claims])
            if conflicts:
                wait_for[node_id] = sorted({c.holder for c in conflicts})
        events = await self.store.list_events(execution_id, last=50)
        return Debug(
            execution=ex,
            ready=start_order(ex.plan, ready),
            running=[
                {
                    "node": n.node_id,
                    "job_id": str(n.job_id) if n.job_id else None,
                    "started_at": n.started_at,
                    "lease_expires_at": n.lease_expires_at,
                }
                for n in ex.nodes
                if n.status == NodeStatus.RUNNING.value
            ],
            locks=[
                {
                    "owner": row["owner"],
                    "claim": row["claim"],
                    "mode": row["mode"],
                    "execution_id": str(row["execution_id"]) if row["execution_id"] else None,
                    "node": row["node_id"],
                    "acquired_at": row["acquired_at"],
                }
                for row in held
            ],
            wait_for=wait_for,
            events=events,
        )

    async def metrics(self, workspace_id: UUID, execution_id: UUID) -> dict[str, Any]:
        ex = await self.get(workspace_id, execution_id)
        return execution_metrics(ex)


def execution_metrics(ex: Execution) -> dict[str, Any]:
    """Per-execution figures, measured from the engine's own node timestamps."""
    counts: dict[str, int] = {}
    durations: list[float] = []
    waits: list[float] = []
    for n in ex.nodes:
        counts[n.status] = counts.get(n.status, 0) + 1
        if n.started_at and n.completed_at:
            durations.append((n.completed_at - n.started_at).total_seconds())
        if n.ready_at and n.started_at:
            waits.append(max(0.0, (n.started_at - n.ready_at).total_seconds()))
    return {
        "nodes_total": len(ex.nodes),
        "nodes_completed": counts.get("completed", 0),
        "nodes_failed": counts.get("failed", 0),
        "nodes_by_status": counts,
        "current_concurrency": counts.get("running", 0),
        "peak_concurrency": ex.peak_concurrency,
        "node_duration_s": _summary(durations),
        "queue_wait_s": _summary(waits),
        "lock_contentions": sum(n.contentions for n in ex.nodes),
        "lock_wait_s": round(sum(n.lock_wait_s for n in ex.nodes), 6),
    }


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "count": len(ordered),
        "avg": round(statistics.fmean(ordered), 6),
        "min": round(ordered[0], 6),
        "max": round(ordered[-1], 6),
        "p95": round(p95, 6),
    }


def _with_concurrency(plan: Plan, concurrency: int) -> Plan:
    return validate_plan(replace(plan, concurrency=concurrency))
