"""Alembic migrations on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from stitchwork.storage.db import Database
from stitchwork.storage.migrate import current_revision, downgrade, head_revision, upgrade
from stitchwork.storage.tables import api_keys, executions, metadata, resource_locks, workspaces
from stitchwork.storage.types import UTCDateTime
from tests.conftest import Backend


async def _tables(db: Database) -> set[str]:
    async with db.read() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_creates_every_table_and_downgrade_removes_them(backend: Backend) -> None:
    db = Database(backend.database_url, search_path=backend.search_path)
    try:
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        assert set(metadata.tables) <= await _tables(db)
        await downgrade(db, "base")
        assert await current_revision(db) is None
        assert not set(metadata.tables) & await _tables(db)
    finally:
        await db.dispose()


async def test_the_migrations_build_exactly_the_schema_of_tables_py(backend: Backend) -> None:
    db = Database(backend.database_url, search_path=backend.search_path)
    options = {"compare_type": True, "compare_server_default": True}
    try:
        await upgrade(db)
        async with db.read() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts=options), metadata)
            )
        assert diff == []
    finally:
        await db.dispose()


async def test_concurrent_upgrades_from_several_processes_all_succeed(backend: Backend) -> None:
    dbs = [Database(backend.database_url, search_path=backend.search_path) for _ in range(4)]
    try:
        await asyncio.gather(*(upgrade(db) for db in dbs))
        assert {await current_revision(db) for db in dbs} == {head_revision()}
    finally:
        for db in dbs:
            await db.dispose()


async def test_0006_makes_every_existing_key_an_admin_and_keys_named_repos_by_workspace(
    backend: Backend,
) -> None:
    db = Database(backend.database_url, search_path=backend.search_path)
    now = datetime.now(UTC)
    alpha, beta, ex = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    lock = {"mode": "write", "acquired_at": now, "execution_id": None, "node_id": None}
    try:
        await upgrade(db, "0005")
        async with db.begin() as conn:
            await conn.execute(
                insert(workspaces),
                [
                    {"id": alpha, "name": "alpha", "created_at": now},
                    {"id": beta, "name": "beta", "created_at": now},
                ],
            )
            await conn.execute(
                _KEYS_0005.insert(),
                {
                    "id": uuid.uuid4(),
                    "workspace_id": alpha,
                    "name": "old",
                    "prefix": "abc123",
                    "key_hash": "0" * 64,
                    "created_at": now,
                },
            )
            await conn.execute(
                insert(executions).values(
                    id=ex,
                    workspace_id=beta,
                    status="running",
                    dispatch="pull",
                    repo="shop",
                    concurrency=1,
                    failure_policy="fail_fast",
                    created_at=now,
                    updated_at=now,
                    last_event_at=now,
                )
            )
            await conn.execute(
                insert(resource_locks),
                [
                    {
                        **lock,
                        "id": uuid.uuid4(),
                        "repo": "shop",
                        "owner": f"{ex}/a",
                        "claim": "src/",
                        "execution_id": ex,
                        "node_id": "a",
                    },
                    {
                        **lock,
                        "id": uuid.uuid4(),
                        "repo": "shop",
                        "owner": "hold:alice",
                        "claim": "docs/",
                    },
                    {
                        **lock,
                        "id": uuid.uuid4(),
                        "repo": "/srv/shop",
                        "owner": "hold:bob",
                        "claim": "lib/",
                    },
                ],
            )

        await upgrade(db)

        async with db.read() as conn:
            keys = (await conn.execute(select(api_keys.c.role, api_keys.c.scopes))).all()
            assert [(k.role, k.scopes) for k in keys] == [("admin", [])]
            assert await _locks(conn) == {
                (f"{beta}:shop", f"{ex}/a"),  # a node's lock: its execution's workspace
                (f"{alpha}:shop", "hold:alice"),  # a hold blocked every workspace's "shop"
                (f"{beta}:shop", "hold:alice"),
                ("/srv/shop", "hold:bob"),  # a shared checkout stays global
            }
        # A key made now has no role unless its maker gives one.
        with pytest.raises(IntegrityError):
            async with db.begin() as conn:
                await conn.execute(
                    _KEYS_0005.insert(),
                    {
                        "id": uuid.uuid4(),
                        "workspace_id": alpha,
                        "name": "new",
                        "prefix": "def456",
                        "key_hash": "0" * 64,
                        "created_at": now,
                    },
                )

        await downgrade(db, "0005")

        async with db.read() as conn:
            assert await _locks(conn) == {
                ("shop", f"{ex}/a"),
                ("shop", "hold:alice"),
                ("/srv/shop", "hold:bob"),
            }
    finally:
        await db.dispose()


# api_keys as revision 0005 had it: no role, no scopes.
_KEYS_0005 = sa.table(
    "api_keys",
    sa.column("id", sa.Uuid()),
    sa.column("workspace_id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("prefix", sa.String()),
    sa.column("key_hash", sa.String()),
    sa.column("created_at", UTCDateTime()),
)


async def _locks(conn: AsyncConnection) -> set[tuple[str, str]]:
    rows = await conn.execute(select(resource_locks.c.repo, resource_locks.c.owner))
    return {(r.repo, r.owner) for r in rows}
