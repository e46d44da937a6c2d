"""Real ``stitchwork`` processes against a real database (a SQLite file or a fresh Postgres
database, since a separate process cannot share a test's schema search path)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL, require_postgres


async def _admin(sql: str) -> None:
    import asyncpg

    url = make_url(PG_URL).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}"
        return
    yield from postgres_database()


def postgres_database() -> Iterator[str]:
    """A fresh Postgres database for one test (processes cannot share a schema search path)."""
    require_postgres()
    name = f"sw_e2e_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


FAST_TIMINGS = {
    "STITCHWORK_LEASE": "2",
    "STITCHWORK_HEARTBEAT_INTERVAL": "0.5",
    "STITCHWORK_SWEEP_INTERVAL": "0.3",
    "STITCHWORK_POLL_INTERVAL": "0.2",
    "STITCHWORK_LOG_LEVEL": "info",
}


@pytest.fixture
def spawn(tmp_path: Path, database_url: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``stitchwork <args>`` as a real process on the test database; all are killed at
    the end of the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def _spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
        full_env = {
            **os.environ,
            **FAST_TIMINGS,
            "STITCHWORK_DATA_DIR": str(tmp_path / "data"),
            "STITCHWORK_DATABASE_URL": database_url,
            **env,
        }
        log = open(tmp_path / f"proc-{len(procs)}.log", "wb")  # noqa: SIM115 - lives with proc
        proc = subprocess.Popen(
            [sys.executable, "-m", "stitchwork.cli.main", *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def eventually(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll an async ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
