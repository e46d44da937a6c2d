"""Column types and ids that behave the same on SQLite and Postgres."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; ``timestamptz`` on Postgres, ISO text on SQLite.

    SQLite stores the naive UTC value in one fixed format, so string comparison in SQL
    (``lease_expires_at < :now``) orders correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type() -> TypeEngine[Any]:
    return JSON().with_variant(JSONB(), "postgresql")


class _Uuid7:
    """Time-ordered UUIDs (RFC 9562 version 7), monotonic within this process.

    Ids sort in creation order, which gives FIFO tie-breaks, cursor pagination on the primary
    key and cheap B-tree inserts. Within one millisecond the 12-bit ``rand_a`` field is used as
    a counter (RFC 9562, method 1) so ids created in a burst still sort in creation order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> uuid.UUID:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._counter += 1
                if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms += 1
                    self._counter = 0
                ms = self._last_ms
            else:
                self._last_ms = ms
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
            counter = self._counter
        tail = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | tail
        return uuid.UUID(int=value)


new_id = _Uuid7()
