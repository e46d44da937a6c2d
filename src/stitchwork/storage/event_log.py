"""Reads of the event log for the cross-process bus relays (``bus/relay.py``): where the log
ends, which ids were committed since a point, events by id, and one job's (or execution's)
events between two seqs."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import func, select

from stitchwork.domain.events import Event
from stitchwork.storage.db import Database
from stitchwork.storage.rows import event_from_row
from stitchwork.storage.tables import job_events

# Bound parameters per ``IN (...)`` query: well under SQLite's 32,766 and asyncpg's 32,767.
IDS_PER_QUERY = 5000


class SqlEventLog:
    """Read-only access to ``job_events`` by id, for processes that learn of events from a
    relay and read them from the database, the source of truth."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def last_event_id(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.max(job_events.c.id)))).scalar() or 0)

    async def list_events_since(self, after_id: int, *, limit: int = 1000) -> list[Event]:
        """Every event with a global ``id > after_id``, in id order."""
        stmt = select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt.limit(limit))).mappings()
            return [event_from_row(r) for r in rows]

    async def list_event_ids_since(self, after_id: int, *, limit: int = 1000) -> list[int]:
        """The ids above ``after_id``, in order: the primary key alone, so a relay's periodic
        check for anything it missed costs an index scan, not the rows."""
        stmt = select(job_events.c.id).where(job_events.c.id > after_id).order_by(job_events.c.id)
        async with self.db.read() as conn:
            return [int(i) for i in (await conn.execute(stmt.limit(limit))).scalars()]

    async def find_events(self, ids: Sequence[int]) -> list[Event]:
        """The events with these ids that exist, in id order."""
        found: list[Event] = []
        unique = sorted(set(ids))
        async with self.db.read() as conn:
            for start in range(0, len(unique), IDS_PER_QUERY):
                chunk = unique[start : start + IDS_PER_QUERY]
                stmt = select(job_events).where(job_events.c.id.in_(chunk))
                found += [event_from_row(r) for r in (await conn.execute(stmt)).mappings()]
        found.sort(key=lambda e: e.id)
        return found

    async def list_owner_events(
        self,
        *,
        job_id: UUID | None = None,
        execution_id: UUID | None = None,
        after_seq: int,
        until_seq: int,
        limit: int = 1000,
    ) -> list[Event]:
        """A job's events (or an execution's own, ``job_id`` NULL) with ``after_seq < seq <=
        until_seq``, in seq order."""
        if (job_id is None) == (execution_id is None):
            raise ValueError("give exactly one of job_id and execution_id")
        stmt = select(job_events).where(job_events.c.seq > after_seq, job_events.c.seq <= until_seq)
        if job_id is not None:
            stmt = stmt.where(job_events.c.job_id == job_id)
        else:
            stmt = stmt.where(
                job_events.c.execution_id == execution_id, job_events.c.job_id.is_(None)
            )
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt.order_by(job_events.c.seq).limit(limit))).mappings()
            return [event_from_row(r) for r in rows]
