"""The repository lock table's rows: held claims, and one row per repository whose row lock
serialises lock decisions and whose version says when a cached table is stale.

Rows are keyed by ``lock_key``: a repository given by name belongs to its workspace, so two
workspaces' ``shared-repo`` are two lock tables; an absolute path is one checkout whose files
every workspace shares, so its lock table is global. Every ``repo`` parameter of
``SqlLockStore`` is such a key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.domain.dag import NodeStatus
from stitchwork.domain.executions import ExecutionStatus
from stitchwork.domain.locks import HeldLock, LockMode
from stitchwork.domain.plans import Plan, parse_plan
from stitchwork.errors import InvalidRequest
from stitchwork.storage.db import Database
from stitchwork.storage.rows import Tx
from stitchwork.storage.tables import (
    execution_nodes,
    execution_plans,
    executions,
    repositories,
    resource_locks,
)
from stitchwork.storage.types import new_id

MAX_LOCK_KEY = 500  # the width of resource_locks.repo and repositories.repo


def shared_repo(repo: str) -> bool:
    """Whether ``repo`` is the absolute path of a checkout, which every workspace shares."""
    return os.path.isabs(repo)


def lock_key(workspace_id: UUID, repo: str) -> str:
    """The lock-table key of ``repo`` as a workspace names it: an absolute path as it is (the
    files are the same whoever names them, so exclusion is global), a name as
    ``<workspace id>:<name>`` (names are the workspace's own). ``InvalidRequest`` when the
    key would not fit the table."""
    key = repo if shared_repo(repo) else f"{workspace_id}:{repo}"
    if len(key) > MAX_LOCK_KEY:
        room = MAX_LOCK_KEY - (len(key) - len(repo))
        raise InvalidRequest(f"repository name longer than {room} characters", field="repo")
    return key


def lock_scope(key: str) -> tuple[UUID | None, str]:
    """The inverse of ``lock_key``: (workspace id, name) of a named repository's key, and
    (None, path) for an absolute path, which every workspace shares."""
    if shared_repo(key):
        return None, key
    workspace_id, _, repo = key.partition(":")
    return UUID(workspace_id), repo


class SqlLockStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def running_owners(
        self, conn: AsyncConnection, owners: Sequence[tuple[UUID, str, str]]
    ) -> set[str]:
        """Of (execution id, node id, owner name) triples, the owners whose node is running
        in a running or paused execution (they will finish and release their locks)."""
        live: set[str] = set()
        for execution_id, node_id, owner in owners:
            row = await conn.execute(
                select(execution_nodes.c.node_id)
                .join(executions, executions.c.id == execution_nodes.c.execution_id)
                .where(
                    execution_nodes.c.execution_id == execution_id,
                    execution_nodes.c.node_id == node_id,
                    execution_nodes.c.status == NodeStatus.RUNNING.value,
                    executions.c.status.in_(
                        [ExecutionStatus.RUNNING.value, ExecutionStatus.PAUSED.value]
                    ),
                )
            )
            if row.first() is not None:
                live.add(owner)
        return live

    async def lock_repo(self, tx: Tx, repo: str, *, create: bool = True) -> int:
        """Lock the repository's row for this transaction (``create`` it if it may be
        missing); returns its lock version.

        Without ``create`` a missing row is still created: a caller's belief that the row
        exists (say, from a transaction that rolled back) must never break the repository.
        """
        if create:
            dialect_insert = pg_insert if self.db.is_postgres else sqlite_insert
            await tx.conn.execute(
                dialect_insert(repositories)
                .values(repo=repo, lock_version=0)
                .on_conflict_do_nothing(index_elements=["repo"])
            )
        row = await tx.conn.execute(
            select(repositories.c.lock_version).where(repositories.c.repo == repo).with_for_update()
        )
        if create:
            return int(row.scalar_one())
        version = row.scalar_one_or_none()
        return int(version) if version is not None else await self.lock_repo(tx, repo)

    async def bump_repo(self, tx: Tx, repo: str) -> int:
        result = await tx.conn.execute(
            update(repositories)
            .where(repositories.c.repo == repo)
            .values(lock_version=repositories.c.lock_version + 1)
            .returning(repositories.c.lock_version)
        )
        return int(result.scalar_one())

    async def held_locks(self, conn: AsyncConnection, repo: str) -> list[Mapping[Any, Any]]:
        rows = await conn.execute(
            select(resource_locks)
            .where(resource_locks.c.repo == repo)
            .order_by(resource_locks.c.acquired_at, resource_locks.c.owner)
        )
        return list(rows.mappings())

    async def insert_locks(
        self,
        tx: Tx,
        repo: str,
        locks: Sequence[tuple[HeldLock, UUID | None, str | None]],
        now: datetime,
    ) -> None:
        if not locks:
            return
        await tx.conn.execute(
            insert(resource_locks),
            [
                {
                    "id": new_id(),
                    "repo": repo,
                    "owner": held.owner,
                    "claim": held.claim,
                    "mode": LockMode(held.mode).value,
                    "execution_id": execution_id,
                    "node_id": node_id,
                    "acquired_at": now,
                }
                for held, execution_id, node_id in locks
            ],
        )

    async def delete_locks(self, tx: Tx, repo: str, owners: Iterable[str]) -> int:
        names = list(owners)
        if not names:
            return 0
        result = await tx.conn.execute(
            delete(resource_locks).where(
                resource_locks.c.repo == repo, resource_locks.c.owner.in_(names)
            )
        )
        return int(result.rowcount or 0)

    async def starved_nodes(
        self, conn: AsyncConnection, key: str, *, blocked_before: datetime, exclude: UUID
    ) -> list[tuple[UUID, str]]:
        """Ready nodes of other running executions on the repository whose lock-table key is
        ``key``, blocked since before a time. Executions store the repository as given, so a
        name matches only in its own workspace."""
        workspace_id, repo = lock_scope(key)
        same_table = [executions.c.repo == repo]
        if workspace_id is not None:
            same_table.append(executions.c.workspace_id == workspace_id)
        rows = await conn.execute(
            select(execution_nodes.c.execution_id, execution_nodes.c.node_id)
            .join(executions, executions.c.id == execution_nodes.c.execution_id)
            .where(
                *same_table,
                executions.c.status == ExecutionStatus.RUNNING.value,
                executions.c.id != exclude,
                execution_nodes.c.status == NodeStatus.READY.value,
                execution_nodes.c.blocked_since < blocked_before,
            )
        )
        return [(r[0], r[1]) for r in rows]

    async def execution_workspaces(
        self, conn: AsyncConnection, ids: Iterable[UUID]
    ) -> dict[UUID, UUID]:
        """The workspace of each of these executions."""
        wanted = list(ids)
        if not wanted:
            return {}
        rows = await conn.execute(
            select(executions.c.id, executions.c.workspace_id).where(executions.c.id.in_(wanted))
        )
        return {r[0]: r[1] for r in rows}

    async def plans(self, conn: AsyncConnection, ids: Iterable[UUID]) -> dict[UUID, Plan]:
        wanted = list(ids)
        if not wanted:
            return {}
        rows = await conn.execute(
            select(execution_plans.c.execution_id, execution_plans.c.plan).where(
                execution_plans.c.execution_id.in_(wanted)
            )
        )
        return {r[0]: parse_plan(json.dumps(r[1]), format="json") for r in rows}
