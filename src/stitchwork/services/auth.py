"""Workspaces, bearer API keys, and what each key may do.

A key reads ``sw_<prefix>_<secret>``. The prefix (public, unique) finds the row; the SHA-256 of
the whole key is compared in constant time. The clear key is shown once, at creation.

A key has a role and extra scopes. The role grants a fixed set of scopes (``ROLE_SCOPES``);
extra scopes add to it, never take away. ``Principal.allows`` is the one decision, pure and
tested exhaustively; the API asks it through ``api.deps.require`` on every route.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from uuid import UUID

from stitchwork.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from stitchwork.storage.auth import ApiKey, SqlAuthStore, Workspace

DEFAULT_WORKSPACE = "default"
KEY_SCHEME = "sw"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    READER = "reader"


class Scope(StrEnum):
    """The fixed scopes. Submitting a job needs ``submit_scope(<type>)`` besides."""

    JOBS_READ = "jobs:read"  # jobs, steps, events, their streams
    JOBS_WRITE = "jobs:write"  # cancel, retry
    EXECUTIONS_READ = "executions:read"  # executions, waves, events, debug, metrics, stream
    EXECUTIONS_WRITE = "executions:write"  # create, start/pause/resume/abort, pull mode
    LOCKS_READ = "locks:read"  # the lock table of the workspace's repositories
    LOCKS_WRITE = "locks:write"  # holds on the workspace's named repositories
    LOCKS_GLOBAL = "locks:global"  # holds on absolute paths, which every workspace shares
    QUEUES_READ = "queues:read"  # queue pause state and this workspace's depth
    QUEUES_WRITE = "queues:write"  # pause/resume: a queue serves every workspace
    METRICS_READ = "metrics:read"  # this workspace's figures
    METRICS_ALL = "metrics:all"  # database-wide figures (``?all=true``)
    KEYS_ADMIN = "keys:admin"  # key and workspace management


SUBMIT_PREFIX = "jobs:submit:"
SUBMIT_ANY = f"{SUBMIT_PREFIX}*"
# Job types that run whatever command they are given: ``jobs:submit:*`` does not cover them,
# only their own scope (or the admin role) does.
EXPLICIT_SUBMIT_TYPES = frozenset({"shell"})

_READ = frozenset(
    {Scope.JOBS_READ, Scope.EXECUTIONS_READ, Scope.LOCKS_READ, Scope.QUEUES_READ}
    | {Scope.METRICS_READ}
)
ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.READER: _READ,
    Role.OPERATOR: _READ
    | {Scope.JOBS_WRITE, Scope.EXECUTIONS_WRITE, Scope.LOCKS_WRITE, SUBMIT_ANY},
    # Every scope, every job type included: ``allows`` answers yes to anything for an admin.
    Role.ADMIN: frozenset(Scope) | {SUBMIT_ANY},
}

_JOB_TYPE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def submit_scope(job_type: str) -> str:
    """The scope that lets a key submit jobs of ``job_type``: ``jobs:submit:<type>``."""
    return f"{SUBMIT_PREFIX}{job_type}"


def allows(role: Role, scopes: Collection[str], scope: str) -> bool:
    """Whether a key with ``role`` and extra ``scopes`` holds ``scope``."""
    if role is Role.ADMIN:
        return True
    granted = ROLE_SCOPES[role] | frozenset(scopes)
    if scope in granted:
        return True
    job_type = scope.removeprefix(SUBMIT_PREFIX)
    return job_type != scope and SUBMIT_ANY in granted and job_type not in EXPLICIT_SUBMIT_TYPES


def check_grants(
    role: str, scopes: Iterable[str], *, job_types: Collection[str] | None = None
) -> tuple[Role, tuple[str, ...]]:
    """A key's role and extra scopes, validated: unknown ones raise ``InvalidRequest`` naming
    them and what is allowed. ``job_types`` (when given) are the types a submit scope may
    name; otherwise any well-formed type name is accepted."""
    try:
        checked_role = Role(role)
    except ValueError:
        raise InvalidRequest(
            f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}", field="role"
        ) from None
    known = {s.value for s in Scope}
    checked: list[str] = []
    for scope in scopes:
        job_type = scope.removeprefix(SUBMIT_PREFIX)
        if scope in known or scope == SUBMIT_ANY:
            pass
        elif job_type == scope or not _JOB_TYPE.match(job_type):
            raise InvalidRequest(
                f"unknown scope {scope!r}; scopes: {', '.join(sorted(known))}, "
                f"{SUBMIT_PREFIX}<job type> and {SUBMIT_ANY}",
                field="scopes",
            )
        elif job_types is not None and job_type not in job_types:
            raise InvalidRequest(
                f"unknown job type {job_type!r} in scope {scope!r}; job types: "
                f"{', '.join(sorted(job_types))}",
                field="scopes",
            )
        if scope not in checked:
            checked.append(scope)
    return checked_role, tuple(checked)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key, the workspace it is scoped to, its role and extra scopes."""

    workspace_id: UUID
    key_id: UUID
    key_name: str
    role: Role
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def actor(self) -> str:
        return f"key:{self.key_name}"

    def allows(self, scope: str) -> bool:
        return allows(self.role, self.scopes, scope)

    def require(self, scope: str) -> None:
        """Raise ``Forbidden`` naming ``scope`` unless this key holds it."""
        if not self.allows(scope):
            raise Forbidden(
                f"this key ({self.key_name!r}, role {self.role.value}) lacks the scope "
                f"{scope!r}: use a key whose role grants it, or one created with "
                f"--scope {scope}",
                required_scope=scope,
                role=self.role.value,
            )

    def require_submit(self, job_type: str) -> None:
        """``require`` the scope that submits jobs of ``job_type``."""
        self.require(submit_scope(job_type))


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

    async def create_key(
        self,
        workspace_name: str,
        name: str,
        role: str,
        scopes: Iterable[str] = (),
        *,
        job_types: Collection[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the workspace; returns the record and the clear key (shown once).

        Every caller names the role: there is no default to fall into (``stitchwork keys
        create`` chooses reader, the least privilege). ``job_types`` limits the types a submit
        scope may name.
        """
        if not name or len(name) > 100:
            raise InvalidRequest("key name must be 1-100 characters", field="name")
        checked_role, checked_scopes = check_grants(role, scopes, job_types=job_types)
        ws, _ = await self.ensure_workspace(workspace_name)
        prefix = secrets.token_hex(6)
        clear = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
        record = await self.store.insert_key(
            ws.id, name, prefix, hash_key(clear), role=checked_role, scopes=checked_scopes
        )
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
        return Principal(
            workspace_id=key.workspace_id,
            key_id=key.id,
            key_name=key.name,
            role=Role(key.role),
            scopes=frozenset(key.scopes),
        )
