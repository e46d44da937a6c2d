"""Workspaces and API keys. Keys are stored as SHA-256 hashes, never in clear, with the role
and extra scopes that say what each may do (``services.auth`` decides)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import insert, select, update

from stitchwork.clock import Clock
from stitchwork.storage.db import Database
from stitchwork.storage.tables import api_keys, workspaces
from stitchwork.storage.types import new_id


@dataclass(frozen=True, slots=True)
class Workspace:
    id: UUID
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: UUID
    workspace_id: UUID
    name: str
    prefix: str
    key_hash: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    role: str
    scopes: tuple[str, ...]


def _key(row: Any) -> ApiKey:
    fields = {c: row[c] for c in ApiKey.__slots__}
    fields["scopes"] = tuple(fields["scopes"] or ())
    return ApiKey(**fields)


class SqlAuthStore:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def find_workspace(self, name: str) -> Workspace | None:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(select(workspaces).where(workspaces.c.name == name)))
                .mappings()
                .first()
            )
        return Workspace(row["id"], row["name"], row["created_at"]) if row else None

    async def create_workspace(self, name: str) -> Workspace:
        ws = Workspace(new_id(), name, self.clock.now())
        async with self.db.begin() as conn:
            await conn.execute(
                insert(workspaces).values(id=ws.id, name=ws.name, created_at=ws.created_at)
            )
        return ws

    async def list_workspaces(self) -> list[Workspace]:
        async with self.db.read() as conn:
            rows = (await conn.execute(select(workspaces).order_by(workspaces.c.name))).mappings()
            return [Workspace(r["id"], r["name"], r["created_at"]) for r in rows]

    async def insert_key(
        self,
        workspace_id: UUID,
        name: str,
        prefix: str,
        key_hash: str,
        *,
        role: str,
        scopes: Sequence[str] = (),
    ) -> ApiKey:
        key = ApiKey(
            new_id(),
            workspace_id,
            name,
            prefix,
            key_hash,
            self.clock.now(),
            None,
            None,
            role=str(role),  # a StrEnum member is stored and read back as its plain value
            scopes=tuple(scopes),
        )
        async with self.db.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    workspace_id=workspace_id,
                    name=name,
                    prefix=prefix,
                    key_hash=key_hash,
                    created_at=key.created_at,
                    role=key.role,
                    scopes=list(key.scopes),
                )
            )
        return key

    async def find_key(self, prefix: str) -> ApiKey | None:
        async with self.db.read() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)))
                .mappings()
                .first()
            )
        return _key(row) if row else None

    async def list_keys(self, workspace_id: UUID | None = None) -> list[ApiKey]:
        stmt = select(api_keys).order_by(api_keys.c.created_at)
        if workspace_id is not None:
            stmt = stmt.where(api_keys.c.workspace_id == workspace_id)
        async with self.db.read() as conn:
            return [_key(r) for r in (await conn.execute(stmt)).mappings()]

    async def revoke_key(self, prefix: str) -> ApiKey | None:
        async with self.db.begin() as conn:
            row = (
                (
                    await conn.execute(
                        update(api_keys)
                        .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                        .values(revoked_at=self.clock.now())
                        .returning(*api_keys.c)
                    )
                )
                .mappings()
                .first()
            )
        return _key(row) if row else None
