"""Rows of executions, their nodes, their events and the repository lock table.

Every method takes the caller's transaction: one scheduling decision (and everything it
changes: nodes, jobs, locks, events) commits or rolls back as a whole.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.domain.dag import NodeStatus
from stitchwork.domain.events import Event, EventType
from stitchwork.domain.executions import (
    Dispatch,
    Execution,
    ExecutionNode,
    ExecutionStatus,
)
from stitchwork.domain.plans import Plan, parse_plan, plan_to_dict
from stitchwork.errors import NotFound
from stitchwork.storage.db import Database
from stitchwork.storage.rows import Tx, event_from_row, insert_events
from stitchwork.storage.tables import (
    execution_nodes,
    execution_plans,
    executions,
    job_events,
    runner_jobs,
)


@dataclass(slots=True)
class NodeRow:
    """The mutable mirror of one ``execution_nodes`` row."""

    node_id: str
    ordinal: int
    status: NodeStatus
    job_id: UUID | None = None
    attempt: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    error: str | None = None
    result: Any = None
    ready_at: datetime | None = None
    blocked_since: datetime | None = None
    lock_wait_s: float = 0.0
    contentions: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None

    def snapshot(self) -> ExecutionNode:
        return ExecutionNode(
            node_id=self.node_id,
            ordinal=self.ordinal,
            status=self.status.value,
            job_id=self.job_id,
            attempt=self.attempt,
            error=self.error,
            result=self.result,
            lease_expires_at=self.lease_expires_at,
            ready_at=self.ready_at,
            blocked_since=self.blocked_since,
            lock_wait_s=self.lock_wait_s,
            contentions=self.contentions,
            started_at=self.started_at,
            completed_at=self.completed_at,
        )


_NODE_COLUMNS = [f.name for f in fields(NodeRow)]
_NODE_UPDATABLE = [c for c in _NODE_COLUMNS if c not in {"node_id", "ordinal"}]
PLAN_CACHE_SIZE = 64  # plans of executions read recently (a 10,000-node plan is ~10 MB)


@dataclass(slots=True)
class ExecutionRow:
    """The mutable mirror of one ``executions`` row."""

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

    def snapshot(
        self, nodes: Iterable[NodeRow] = (), *, counts: Mapping[str, int] | None = None
    ) -> Execution:
        """A frozen copy; with ``nodes`` (and counts from them), or with ``counts`` only."""
        ordered = tuple(n.snapshot() for n in sorted(nodes, key=lambda n: n.ordinal))
        if counts is None:
            counts = {}
            for n in ordered:
                counts[n.status] = counts.get(n.status, 0) + 1
        return Execution(
            id=self.id,
            workspace_id=self.workspace_id,
            name=self.name,
            status=self.status,
            dispatch=self.dispatch,
            repo=self.repo,
            plan=self.plan,
            concurrency=self.concurrency,
            version=self.version,
            last_event_seq=self.last_event_seq,
            peak_concurrency=self.peak_concurrency,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            updated_at=self.updated_at,
            last_event_at=self.last_event_at,
            nodes=ordered,
            counts={status: n for status, n in counts.items() if n},
        )


def _plan_from_json(data: Any) -> Plan:
    return parse_plan(json.dumps(data), format="json")


def _execution_from_row(row: Mapping[Any, Any], plan: Plan) -> ExecutionRow:
    return ExecutionRow(
        id=row["id"],
        workspace_id=row["workspace_id"],
        name=row["name"],
        status=ExecutionStatus(row["status"]),
        dispatch=Dispatch(row["dispatch"]),
        repo=row["repo"],
        plan=plan,
        concurrency=row["concurrency"],
        version=row["version"],
        last_event_seq=row["last_event_seq"],
        peak_concurrency=row["peak_concurrency"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        updated_at=row["updated_at"],
        last_event_at=row["last_event_at"],
    )


def _node_from_row(row: Mapping[Any, Any]) -> NodeRow:
    values = {c: row[c] for c in _NODE_COLUMNS}
    values["status"] = NodeStatus(values["status"])
    return NodeRow(**values)


class SqlExecutionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # A stored plan never changes, and parsing a large one again costs 60 µs per node.
        self._plans: OrderedDict[UUID, Plan] = OrderedDict()

    # -- executions -----------------------------------------------------------------------

    async def insert(self, tx: Tx, ex: ExecutionRow, nodes: Sequence[NodeRow]) -> None:
        await tx.conn.execute(
            insert(executions).values(
                id=ex.id,
                workspace_id=ex.workspace_id,
                name=ex.name,
                status=ex.status.value,
                dispatch=ex.dispatch.value,
                repo=ex.repo,
                concurrency=ex.concurrency,
                failure_policy=ex.plan.failure_policy.value,
                version=ex.version,
                last_event_seq=ex.last_event_seq,
                peak_concurrency=0,
                created_at=ex.created_at,
                updated_at=ex.updated_at,
                last_event_at=ex.last_event_at,
            )
        )
        await tx.conn.execute(
            insert(execution_plans).values(execution_id=ex.id, plan=plan_to_dict(ex.plan))
        )
        self._remember_plan(ex.id, ex.plan)  # a rolled-back id is never looked up
        rows = [
            {"execution_id": ex.id, **{c: _db_value(getattr(n, c)) for c in _NODE_COLUMNS}}
            for n in nodes
        ]
        for start in range(0, len(rows), 1000):
            await tx.conn.execute(insert(execution_nodes), rows[start : start + 1000])

    async def lock(
        self, tx: Tx, execution_id: UUID, *, workspace_id: UUID | None = None
    ) -> Mapping[Any, Any]:
        """The execution's row, locked for this transaction (Postgres ``FOR UPDATE``; SQLite
        write transactions are serial). Raises ``NotFound``."""
        stmt = select(executions).where(executions.c.id == execution_id)
        if workspace_id is not None:
            stmt = stmt.where(executions.c.workspace_id == workspace_id)
        row = (await tx.conn.execute(stmt.with_for_update())).mappings().first()
        if row is None:
            raise NotFound(f"execution {execution_id} not found", execution_id=str(execution_id))
        return row

    def _remember_plan(self, execution_id: UUID, plan: Plan) -> None:
        self._plans[execution_id] = plan
        self._plans.move_to_end(execution_id)
        while len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)

    async def load_plan(self, conn: AsyncConnection, execution_id: UUID) -> Plan:
        return (await self._load_plans(conn, [execution_id]))[execution_id]

    async def _load_plans(self, conn: AsyncConnection, ids: Sequence[UUID]) -> dict[UUID, Plan]:
        found = {i: self._plans[i] for i in ids if i in self._plans}
        missing = [i for i in ids if i not in found]
        if missing:
            rows = await conn.execute(
                select(execution_plans.c.execution_id, execution_plans.c.plan).where(
                    execution_plans.c.execution_id.in_(missing)
                )
            )
            for execution_id, data in rows:
                found[execution_id] = _plan_from_json(data)
        for execution_id, plan in found.items():
            self._remember_plan(execution_id, plan)
        return found

    @staticmethod
    def execution_from_row(row: Mapping[Any, Any], plan: Plan) -> ExecutionRow:
        return _execution_from_row(row, plan)

    async def load_nodes(self, conn: AsyncConnection, execution_id: UUID) -> list[NodeRow]:
        rows = await conn.execute(
            select(execution_nodes)
            .where(execution_nodes.c.execution_id == execution_id)
            .order_by(execution_nodes.c.ordinal)
        )
        return [_node_from_row(r) for r in rows.mappings()]

    async def save(self, tx: Tx, ex: ExecutionRow, dirty: Sequence[NodeRow]) -> None:
        """Write the execution row (version + 1) and the changed nodes."""
        ex.version += 1
        await tx.conn.execute(
            update(executions)
            .where(executions.c.id == ex.id)
            .values(
                status=ex.status.value,
                version=ex.version,
                last_event_seq=ex.last_event_seq,
                peak_concurrency=ex.peak_concurrency,
                started_at=ex.started_at,
                completed_at=ex.completed_at,
                updated_at=ex.updated_at,
                last_event_at=ex.last_event_at,
            )
        )
        if not dirty:
            return
        stmt = (
            update(execution_nodes)
            .where(
                execution_nodes.c.execution_id == bindparam("b_execution_id"),
                execution_nodes.c.node_id == bindparam("b_node_id"),
            )
            .values({c: bindparam(f"b_{c}") for c in _NODE_UPDATABLE})
        )
        params = [
            {
                "b_execution_id": ex.id,
                "b_node_id": n.node_id,
                **{f"b_{c}": _db_value(getattr(n, c)) for c in _NODE_UPDATABLE},
            }
            for n in dirty
        ]
        await tx.conn.execute(stmt, params)

    async def write_events(
        self,
        tx: Tx,
        ex: ExecutionRow,
        events: Sequence[tuple[EventType, dict[str, Any]]],
        *,
        actor: str,
        now: datetime,
    ) -> list[Event]:
        """Append the execution's own events with the next gapless seqs."""
        rows = []
        for type_, payload in events:
            ex.last_event_seq += 1
            rows.append(
                {
                    "job_id": None,
                    "workspace_id": ex.workspace_id,
                    "execution_id": ex.id,
                    "step_id": None,
                    "seq": ex.last_event_seq,
                    "type": type_.value,
                    "actor": actor,
                    "payload": payload,
                    "created_at": now,
                }
            )
        if rows:
            ex.last_event_at = now
        return await insert_events(tx, rows)

    async def find(
        self, conn: AsyncConnection, execution_id: UUID, *, workspace_id: UUID | None = None
    ) -> ExecutionRow | None:
        stmt = select(executions).where(executions.c.id == execution_id)
        if workspace_id is not None:
            stmt = stmt.where(executions.c.workspace_id == workspace_id)
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        return _execution_from_row(row, await self.load_plan(conn, execution_id))

    async def progress(
        self, conn: AsyncConnection, execution_id: UUID
    ) -> tuple[ExecutionStatus, int] | None:
        """Status and last event seq, without reading the plan."""
        row = (
            await conn.execute(
                select(executions.c.status, executions.c.last_event_seq).where(
                    executions.c.id == execution_id
                )
            )
        ).first()
        return None if row is None else (ExecutionStatus(row[0]), int(row[1]))

    async def list_executions(
        self,
        conn: AsyncConnection,
        workspace_id: UUID,
        *,
        status: ExecutionStatus | None = None,
        limit: int = 50,
    ) -> list[ExecutionRow]:
        stmt = select(executions).where(executions.c.workspace_id == workspace_id)
        if status is not None:
            stmt = stmt.where(executions.c.status == status.value)
        rows = list(
            (await conn.execute(stmt.order_by(executions.c.id.desc()).limit(limit))).mappings()
        )
        plans = await self._load_plans(conn, [r["id"] for r in rows])
        return [_execution_from_row(r, plans[r["id"]]) for r in rows]

    async def node_counts(
        self, conn: AsyncConnection, ids: Sequence[UUID]
    ) -> dict[UUID, dict[str, int]]:
        """Nodes by status, for each of these executions."""
        if not ids:
            return {}
        rows = await conn.execute(
            select(execution_nodes.c.execution_id, execution_nodes.c.status, func.count())
            .where(execution_nodes.c.execution_id.in_(list(ids)))
            .group_by(execution_nodes.c.execution_id, execution_nodes.c.status)
        )
        counts: dict[UUID, dict[str, int]] = {}
        for execution_id, status, count in rows:
            counts.setdefault(execution_id, {})[str(status)] = int(count)
        return counts

    async def ids_with_status(
        self, conn: AsyncConnection, statuses: Iterable[ExecutionStatus]
    ) -> list[UUID]:
        rows = await conn.execute(
            select(executions.c.id).where(executions.c.status.in_([s.value for s in statuses]))
        )
        return [r[0] for r in rows]

    async def count_by_status(self, conn: AsyncConnection) -> dict[str, int]:
        rows = await conn.execute(
            select(executions.c.status, func.count()).group_by(executions.c.status)
        )
        return {str(status): int(count) for status, count in rows}

    async def list_events(
        self, execution_id: UUID, *, after: int = 0, limit: int = 1000, last: int | None = None
    ) -> list[Event]:
        """The execution's own events by seq: after a seq, or the ``last`` N."""
        stmt = select(job_events).where(
            job_events.c.execution_id == execution_id, job_events.c.job_id.is_(None)
        )
        async with self.db.read() as conn:
            if last is not None:
                rows = await conn.execute(stmt.order_by(job_events.c.seq.desc()).limit(last))
                return [event_from_row(r) for r in reversed(rows.mappings().all())]
            rows = await conn.execute(
                stmt.where(job_events.c.seq > after).order_by(job_events.c.seq).limit(limit)
            )
            return [event_from_row(r) for r in rows.mappings()]

    # -- jobs of nodes ----------------------------------------------------------------------

    async def ended_jobs(self, tx: Tx, job_ids: Iterable[UUID]) -> dict[UUID, Mapping[Any, Any]]:
        """Status, error and result of those jobs that ended (completed, failed, cancelled)."""
        ids = list(job_ids)
        if not ids:
            return {}
        rows = await tx.conn.execute(
            select(
                runner_jobs.c.id, runner_jobs.c.status, runner_jobs.c.error, runner_jobs.c.result
            ).where(
                runner_jobs.c.id.in_(ids),
                runner_jobs.c.status.in_(["completed", "failed", "cancelled"]),
            )
        )
        return {r["id"]: r for r in rows.mappings()}


def _db_value(value: Any) -> Any:
    return value.value if isinstance(value, NodeStatus) else value


async def stalled_executions(
    conn: AsyncConnection, *, quiet_since: datetime, now: datetime
) -> list[tuple[UUID, datetime]]:
    """Running executions with no event since ``quiet_since`` and no running node that is
    alive (a job with a current lease, or a pull-mode lease that has not expired)."""
    alive = (
        select(execution_nodes.c.node_id)
        .outerjoin(runner_jobs, runner_jobs.c.id == execution_nodes.c.job_id)
        .where(
            execution_nodes.c.execution_id == executions.c.id,
            execution_nodes.c.status == NodeStatus.RUNNING.value,
            ((runner_jobs.c.status == "running") & (runner_jobs.c.lease_expires_at > now))
            | (execution_nodes.c.lease_expires_at > now),
        )
        .exists()
    )
    rows = await conn.execute(
        select(executions.c.id, executions.c.last_event_at).where(
            executions.c.status == ExecutionStatus.RUNNING.value,
            executions.c.last_event_at < quiet_since,
            ~alive,
        )
    )
    return [(r[0], r[1]) for r in rows]
