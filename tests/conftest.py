"""Shared fixtures: a real SQLite file or a real Postgres schema per test.

Postgres tests skip when the server is unreachable, but fail when ``CI=true``: CI can never pass
by skipping. Set ``STITCHWORK_TEST_POSTGRES_URL`` to point them elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import text

from stitchwork.clock import Clock
from stitchwork.config import Settings
from stitchwork.runtime.engine import Engine
from stitchwork.storage.db import Database

PG_URL = os.environ.get(
    "STITCHWORK_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("STITCHWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(url: str, default_port: int = 5432) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    if not _reachable(PG_URL):
        message = f"PostgreSQL is not reachable at {PG_URL}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: service tests must run, not skip)")
        pytest.skip(message)


def require_redis() -> None:
    if not _reachable(REDIS_URL, 6379):
        message = f"Redis is not reachable at {REDIS_URL}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: service tests must run, not skip)")
        pytest.skip(message)


def drop_redis_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every key under ``prefix:`` (a test's own BullMQ queues), never the rest."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@dataclass(frozen=True)
class Backend:
    """Where a test's database lives (a SQLite file, or a fresh schema in Postgres) and, for
    ``bullmq``, the Redis key prefix of its own BullMQ queues."""

    name: str
    database_url: str
    search_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "lease": timedelta(seconds=5),
            "heartbeat_interval": timedelta(seconds=1),
            "sweep_interval": timedelta(milliseconds=200),
            "poll_interval": timedelta(milliseconds=200),
            "shutdown_grace": timedelta(seconds=2),
            "cancel_grace": timedelta(milliseconds=500),
            "backoff_base": timedelta(milliseconds=50),
            "backoff_max": timedelta(milliseconds=200),
            **self.extra,
        }
        values.update(overrides)
        return Settings(**values)

    async def open_engine(self, clock: Clock | None = None, **overrides: Any) -> Engine:
        return await Engine.open(
            self.settings(**overrides), clock=clock, search_path=self.search_path
        )


async def _pg_schema(action: str, schema: str) -> None:
    db = Database(PG_URL)
    try:
        async with db.begin() as conn:
            if action == "create":
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            else:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        await db.dispose()


@pytest.fixture(autouse=True)
def _data_dir_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's data dir (credentials, agent worktrees)."""
    monkeypatch.setenv("STITCHWORK_DATA_DIR", str(tmp_path / "data"))
    # Tests make their repositories in the system temp dir: that is their repository root.
    monkeypatch.setenv("STITCHWORK_REPO_ROOTS", json.dumps([tempfile.gettempdir()]))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each test using this runs twice: on SQLite and on Postgres (the contract suites)."""
    yield from backend_named(request.param, tmp_path)


# For the queue and worker contract suites: the embedded queue on both databases, and BullMQ.
QUEUE_BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("bullmq", marks=pytest.mark.redis),
]


def backend_named(name: str, tmp_path: Path) -> Iterator[Backend]:
    if name == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'stitchwork.db'}")
    elif name == "postgres":
        yield from _postgres_backend()
    else:
        yield from _bullmq_backend(tmp_path)


@pytest.fixture
def pg_backend() -> Iterator[Backend]:
    yield from _postgres_backend()


@pytest.fixture
def bullmq_backend(tmp_path: Path) -> Iterator[Backend]:
    """SQLite for the database, a BullMQ queue on the real Redis under a prefix of its own."""
    yield from _bullmq_backend(tmp_path)


def _bullmq_backend(tmp_path: Path) -> Iterator[Backend]:
    require_redis()
    prefix = f"swt{uuid.uuid4().hex[:10]}"
    try:
        yield Backend(
            "bullmq",
            f"sqlite+aiosqlite:///{tmp_path / 'stitchwork.db'}",
            extra={"queue_url": REDIS_URL, "bullmq_prefix": prefix},
        )
    finally:
        drop_redis_prefix(prefix)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'stitchwork.db'}")


def _postgres_backend() -> Iterator[Backend]:
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_schema("create", schema))
    try:
        yield Backend("postgres", PG_URL, search_path=schema)
    finally:
        asyncio.run(_pg_schema("drop", schema))


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[Engine]:
    eng = await backend.open_engine()
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def workspace_id(engine: Engine) -> uuid.UUID:
    ws, _ = await engine.auth.ensure_workspace("default")
    return ws.id
