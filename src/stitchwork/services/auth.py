"""Workspaces and bearer API keys.

A key reads ``sw_<prefix>_<secret>``. The prefix (public, unique) finds the row; the SHA-256 of
the whole key is compared in constant time. The clear key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from uuid import UUID

from stitchwork.errors import InvalidRequest, NotFound, Unauthorized
from stitchwork.storage.auth import ApiKey, SqlAuthStore, Workspace

DEFAULT_WORKSPACE = "default"
KEY_SCHEME = "sw"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key and the workspace it is scoped to."""

    workspace_id: UUID
    key_id: UUID
    key_name: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_name}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthService:
    def __init__(self, store: SqlAuthStore) -> None:
        self.store = store

    async def ensure_workspace(self, name: str = DEFAULT_WORKSPACE) -> tuple[Workspace, bool]:
        """The workspace called ``name``, created if missing; the flag says it was created."""
        existing = await self.store.find_workspace(name)
        if existing:
            return existing, False
        return await self.store.create_workspace(name), True

    async def create_key(self, workspace_name: str, name: str) -> tuple[ApiKey, str]:
        """A new key for the workspace; returns the record and the clear key (shown once)."""
        if not name or len(name) > 100:
            raise InvalidRequest("key name must be 1-100 characters", field="name")
        ws, _ = await self.ensure_workspace(workspace_name)
        prefix = secrets.token_hex(6)
        clear = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
        record = await self.store.insert_key(ws.id, name, prefix, hash_key(clear))
        return record, clear

    async def list_keys(self) -> list[ApiKey]:
        return await self.store.list_keys()

    async def revoke_key(self, prefix: str) -> ApiKey:
        prefix = prefix.removeprefix(f"{KEY_SCHEME}_").split("_")[0]
        revoked = await self.store.revoke_key(prefix)
        if revoked is None:
            raise NotFound(f"no active key with prefix {prefix!r}", prefix=prefix)
        return revoked

    async def authenticate(self, token: str | None) -> Principal:
        """The principal for a bearer token; ``Unauthorized`` says what is wrong with it."""
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, rest = token.partition("_")
        prefix, _, secret = rest.partition("_")
        if scheme != KEY_SCHEME or not prefix or not secret:
            raise Unauthorized("malformed API key: expected sw_<prefix>_<secret>")
        key = await self.store.find_key(prefix)
        if key is None or not hmac.compare_digest(key.key_hash, hash_key(token)):
            raise Unauthorized("invalid API key")
        if key.revoked_at is not None:
            raise Unauthorized("this API key was revoked")
        return Principal(workspace_id=key.workspace_id, key_id=key.id, key_name=key.name)
