"""Recorded process groups of jobs, and the hosts they run on.

A worker records each process group a job's handler starts (``job_processes``) and marks it
ended once the group is gone. Every ``serve``/``worker`` process refreshes its host's row in
``hosts``. A group is *live* while its row is open and its host was seen within the host grace
under the same boot: such a group may still be writing, so its job is not re-queued and its
claims are not released (see ``docs/agents.md``, "Processes").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import ColumnElement, and_, exists, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.domain.dag import NodeStatus
from stitchwork.storage.db import Database
from stitchwork.storage.tables import execution_nodes, hosts, job_processes, resource_locks
from stitchwork.storage.types import new_id


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One recorded process group (a row of ``job_processes``)."""

    id: UUID
    job_id: UUID
    attempt: int
    worker_id: str
    host: str
    boot_id: str
    pgid: int
    leader_start: int | None
    owner_pid: int
    owner_start: int | None
    started_at: datetime


def live_group_of(job_id: ColumnElement[UUID], *, seen_after: datetime) -> ColumnElement[bool]:
    """SQL: the job has an open process group on a host seen after ``seen_after``, in the
    boot the group was started in."""
    return exists(
        select(job_processes.c.id)
        .join(hosts, hosts.c.host == job_processes.c.host)
        .where(
            job_processes.c.job_id == job_id,
            job_processes.c.ended_at.is_(None),
            hosts.c.boot_id == job_processes.c.boot_id,
            hosts.c.last_seen >= seen_after,
        )
    )


class SqlProcessStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_started(
        self,
        *,
        job_id: UUID,
        attempt: int,
        worker_id: str,
        host: str,
        boot_id: str,
        pgid: int,
        leader_start: int | None,
        owner_pid: int,
        owner_start: int | None,
        now: datetime,
    ) -> UUID:
        row_id = new_id()
        async with self.db.begin() as conn:
            await conn.execute(
                insert(job_processes).values(
                    id=row_id,
                    job_id=job_id,
                    attempt=attempt,
                    worker_id=worker_id,
                    host=host,
                    boot_id=boot_id,
                    pgid=pgid,
                    leader_start=leader_start,
                    owner_pid=owner_pid,
                    owner_start=owner_start,
                    started_at=now,
                )
            )
        return row_id

    async def record_ended(self, ids: Collection[UUID], now: datetime) -> None:
        if not ids:
            return
        async with self.db.begin() as conn:
            await conn.execute(
                update(job_processes)
                .where(job_processes.c.id.in_(list(ids)), job_processes.c.ended_at.is_(None))
                .values(ended_at=now)
            )

    async def open_on_host(self, host: str) -> list[ProcessRecord]:
        """Groups recorded on ``host`` and not yet ended, oldest first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(job_processes)
                .where(job_processes.c.host == host, job_processes.c.ended_at.is_(None))
                .order_by(job_processes.c.started_at)
            )
            return [
                ProcessRecord(**{k: v for k, v in row.items() if k != "ended_at"})
                for row in rows.mappings()
            ]

    async def seen(self, host: str, boot_id: str, now: datetime) -> None:
        """This host is alive (in this boot)."""
        dialect_insert = pg_insert if self.db.is_postgres else sqlite_insert
        stmt = dialect_insert(hosts).values(host=host, boot_id=boot_id, last_seen=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["host"], set_={"boot_id": boot_id, "last_seen": now}
        )
        async with self.db.begin() as conn:
            await conn.execute(stmt)

    async def with_live_groups(
        self, conn: AsyncConnection, job_ids: Sequence[UUID], *, seen_after: datetime
    ) -> set[UUID]:
        """Of ``job_ids``, those with a live process group (see the module docstring)."""
        if not job_ids:
            return set()
        rows = await conn.execute(
            select(job_processes.c.job_id)
            .join(hosts, hosts.c.host == job_processes.c.host)
            .where(
                job_processes.c.job_id.in_(list(job_ids)),
                and_(
                    job_processes.c.ended_at.is_(None),
                    hosts.c.boot_id == job_processes.c.boot_id,
                    hosts.c.last_seen >= seen_after,
                ),
            )
        )
        return set(rows.scalars())

    async def locks_of_ended_nodes(
        self, conn: AsyncConnection
    ) -> list[tuple[str, str, UUID | None]]:
        """(repo, owner, job id) of every node-owned lock whose node is no longer running:
        the scheduler kept them while the node's job still had a live process group."""
        rows = await conn.execute(
            select(resource_locks.c.repo, resource_locks.c.owner, execution_nodes.c.job_id)
            .distinct()
            .join(
                execution_nodes,
                and_(
                    execution_nodes.c.execution_id == resource_locks.c.execution_id,
                    execution_nodes.c.node_id == resource_locks.c.node_id,
                ),
            )
            .where(execution_nodes.c.status != NodeStatus.RUNNING.value)
        )
        return [(r[0], r[1], r[2]) for r in rows]


def host_grace(lease: timedelta) -> timedelta:
    """How long a host may go unseen before its recorded groups are presumed gone: long
    enough for a busy host to refresh its row several times (it does so every lease / 3)."""
    return lease * 2
