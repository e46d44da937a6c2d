"""Keys get a role and extra scopes (``api_keys.role``, ``api_keys.scopes``); a repository
given by name belongs to a workspace, so its lock-table key becomes ``<workspace id>:<name>``.

Every existing key becomes ``admin``: it could do everything before, and taking rights away
is for its owner to decide (``stitchwork keys create --role ...``, then revoke the old key).

Locks on named repositories move to the workspace's key so that running executions keep
their claims across the upgrade: a node's lock goes to its execution's workspace, and a
manual hold (which used to block every workspace's repository of that name) is copied to
every workspace, where it still blocks the same work. Absolute paths stay as they are.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from stitchwork.storage.types import UTCDateTime, json_type

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Frozen copies of the tables as this revision knows them, for the data migration.
_locks = sa.table(
    "resource_locks",
    sa.column("id", sa.Uuid()),
    sa.column("repo", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("claim", sa.String()),
    sa.column("mode", sa.String()),
    sa.column("execution_id", sa.Uuid()),
    sa.column("node_id", sa.String()),
    sa.column("acquired_at", UTCDateTime()),
)
_executions = sa.table(
    "executions", sa.column("id", sa.Uuid()), sa.column("workspace_id", sa.Uuid())
)
_workspaces = sa.table("workspaces", sa.column("id", sa.Uuid()))


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(20), nullable=False, server_default="admin"))
        batch.add_column(
            sa.Column("scopes", json_type(), nullable=False, server_default=sa.text("'[]'"))
        )
    # The default only filled the existing rows: a new key's role is always chosen.
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("role", existing_type=sa.String(20), server_default=None)
    _rekey_locks(lambda workspace_id, repo: f"{workspace_id}:{repo}")


def downgrade() -> None:
    _rekey_locks(None)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("scopes")
        batch.drop_column("role")


def _rekey_locks(key: Callable[[uuid.UUID, str], str] | None) -> None:
    """Move the locks of named repositories to their workspace's key (``key`` given) or back
    to the bare name (``None``, dropping the per-workspace copies of a hold)."""
    conn = op.get_bind()
    rows = (
        conn.execute(
            sa.select(_locks, _executions.c.workspace_id).select_from(
                _locks.outerjoin(_executions, _executions.c.id == _locks.c.execution_id)
            )
        )
        .mappings()
        .all()
    )
    workspaces = [r[0] for r in conn.execute(sa.select(_workspaces.c.id))]
    columns = [c.name for c in _locks.c]
    stale: list[uuid.UUID] = []
    moved: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str, str]] = set()
    for row in rows:
        repo = row["repo"]
        if os.path.isabs(repo):
            continue  # a checkout's files are shared: its lock table stays global
        stale.append(row["id"])
        lock = {c: row[c] for c in columns}
        if key is None:
            # The bare name is what follows the first ':' (a workspace id has none).
            lock["repo"] = repo.split(":", 1)[1] if ":" in repo else repo
            identity = (lock["repo"], lock["owner"], lock["claim"], lock["mode"])
            if identity not in seen:
                seen.add(identity)
                moved.append(lock)
        elif row["workspace_id"] is not None:
            moved.append({**lock, "repo": key(row["workspace_id"], repo)})
        else:  # a manual hold: every workspace's repository of that name was blocked
            moved += [{**lock, "id": uuid.uuid4(), "repo": key(ws, repo)} for ws in workspaces]
    if stale:
        conn.execute(sa.delete(_locks).where(_locks.c.id.in_(stale)))
    if moved:
        conn.execute(sa.insert(_locks), moved)
