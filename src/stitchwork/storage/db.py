"""The database handle: engines for SQLite (embedded default) and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from stitchwork.errors import BackendUnavailable, ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_BUSY_RETRY_MAX_S = 0.05


class Database:
    """Two engines over one database: ``begin()`` for writes, ``read()`` for reads.

    On SQLite the write engine holds a single connection and starts every transaction with
    ``BEGIN IMMEDIATE``: writers queue in-process instead of racing for the file lock, and a
    transaction never fails halfway when it upgrades from reading to writing. Readers use their
    own connections and WAL snapshots, so they never wait for writers.
    On Postgres both are the same pooled engine.
    """

    def __init__(self, url: str, *, search_path: str | None = None, pool_size: int = 10) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"invalid database URL {url!r}: {exc}", field="database_url") from exc
        self.url = url
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.drivername != "sqlite+aiosqlite":
                raise ConfigError(
                    "SQLite URLs must use the async driver: sqlite+aiosqlite:///path/to.db",
                    field="database_url",
                )
            path = parsed.database or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                _ensure_wal(path)
            self.engine = _sqlite_engine(url, path, begin="BEGIN IMMEDIATE", pool_size=1)
            self.read_engine = _sqlite_engine(url, path, begin="BEGIN", pool_size=4)
        elif self.dialect == "postgresql":
            if parsed.drivername != "postgresql+asyncpg":
                raise ConfigError(
                    "Postgres URLs must use the async driver: postgresql+asyncpg://user@host/db",
                    field="database_url",
                )
            connect_args: dict[str, Any] = {}
            if search_path:
                connect_args["server_settings"] = {"search_path": search_path}
            self.engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args=connect_args,
            )
            self.read_engine = self.engine
        else:
            raise ConfigError(
                f"unsupported database {self.dialect!r}: "
                "use sqlite+aiosqlite or postgresql+asyncpg",
                field="database_url",
            )
        self.search_path = search_path

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on success and rolled back on error."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (OperationalError, OSError) as exc:
            if _is_connection_error(exc):
                raise BackendUnavailable(f"database unavailable: {exc}") from exc
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot."""
        try:
            async with self.read_engine.connect() as conn:
                yield conn
        except (OperationalError, OSError) as exc:
            if _is_connection_error(exc):
                raise BackendUnavailable(f"database unavailable: {exc}") from exc
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    return bool(getattr(exc, "connection_invalidated", False)) or "connect" in str(exc).lower()


def _ensure_wal(path: str) -> None:
    """Put the database file in WAL mode once, before any pooled connection opens it.

    The mode is stored in the file. Switching needs an exclusive lock, which a process starting
    beside others may not get at once, so it is retried for up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    problem = "unknown"
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode == "wal":
                return
            problem = f"the file system kept journal mode {mode!r}"
        except sqlite3.OperationalError as exc:
            problem = str(exc)
        time.sleep(0.05)
    raise BackendUnavailable(f"cannot put SQLite database {path} in WAL mode: {problem}")


class InlineSqliteConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the event loop's own thread.

    aiosqlite hands every call (cursor, execute, fetch, close, commit) to a helper thread and
    back: about 150 µs per round trip on a 2-core machine, and SQLAlchemy makes 3 to 4 calls per
    statement, so one small write transaction cost ~2 ms of hand-offs alone, more than the
    work itself. In WAL mode with ``synchronous=NORMAL`` the calls themselves take
    microseconds, so they run inline. The one call that could block, waiting for another
    process's write lock, is not allowed to: the busy timeout is 0 and a busy database is
    retried here with ``asyncio.sleep`` back-off (the loop keeps running) up to
    ``SQLITE_BUSY_TIMEOUT_MS``. A statement that failed with SQLITE_BUSY had no effect, so
    retrying it is safe.
    """

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        deadline: float | None = None
        delay = 0.001
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + SQLITE_BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise
                await asyncio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, SQLITE_BUSY_RETRY_MAX_S)


def _inline_connector(path: str) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    async def connect() -> aiosqlite.Connection:
        # Opened on aiosqlite's thread (which then idles), used from the loop's thread.
        conn = InlineSqliteConnection(
            partial(sqlite3.connect, path, timeout=0, check_same_thread=False),
            iter_chunk_size=64,
        )
        conn._thread.daemon = True
        return await conn

    return connect


def _sqlite_engine(url: str, path: str, *, begin: str, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=60,
        async_creator=_inline_connector(path),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so "begin" below decides the mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")  # waits happen in InlineSqliteConnection
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine
