"""SQLite write transactions wait for another process's lock without blocking the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from stitchwork.storage import db as db_module
from stitchwork.storage.db import Database


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """Another process's writer: holds the database's write lock for ``seconds``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES ('other')")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _database(tmp_path: Path) -> tuple[Database, Path]:
    path = tmp_path / "lock.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    async with db.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v TEXT)"))
    return db, path


async def test_a_write_waits_for_a_foreign_lock_while_the_loop_keeps_running(
    tmp_path: Path,
) -> None:
    db, path = await _database(tmp_path)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.3, locked))
    holder.start()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        await asyncio.to_thread(locked.wait, 5)
        started = time.monotonic()
        async with db.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES ('ours')"))
        waited = time.monotonic() - started
        async with db.read() as conn:
            values = [r[0] for r in await conn.execute(text("SELECT v FROM t ORDER BY rowid"))]
    finally:
        tick_task.cancel()
        holder.join()
        await db.dispose()
    assert values == ["other", "ours"]  # ours committed after the holder's, nothing lost
    assert waited >= 0.2
    assert ticks >= 10  # the event loop ran while the write waited for the lock


async def test_a_write_gives_up_with_the_lock_error_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 100)
    db, path = await _database(tmp_path)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.5, locked))
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 5)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            async with db.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('ours')"))
        gave_up_after = time.monotonic() - started
    finally:
        holder.join()
    try:
        async with db.read() as conn:
            values = [r[0] for r in await conn.execute(text("SELECT v FROM t"))]
    finally:
        await db.dispose()
    assert 0.08 <= gave_up_after < 1.2  # well before the holder lets go
    assert values == ["other"]  # nothing of the failed write was kept
