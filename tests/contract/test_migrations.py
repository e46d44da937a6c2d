"""Alembic migrations on SQLite and Postgres."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect

from stitchwork.storage.db import Database
from stitchwork.storage.migrate import current_revision, downgrade, head_revision, upgrade
from stitchwork.storage.tables import metadata
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


async def test_concurrent_upgrades_from_several_processes_all_succeed(backend: Backend) -> None:
    dbs = [Database(backend.database_url, search_path=backend.search_path) for _ in range(4)]
    try:
        await asyncio.gather(*(upgrade(db) for db in dbs))
        assert {await current_revision(db) for db in dbs} == {head_revision()}
    finally:
        for db in dbs:
            await db.dispose()
