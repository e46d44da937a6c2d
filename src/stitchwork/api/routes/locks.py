"""``/api/v1/locks``: a repository's lock table, and manual holds on claims.

A repository given by name is the caller's workspace's own (another workspace's repository of
the same name is another lock table); an absolute path is one checkout every workspace shares,
so holding or releasing claims there needs ``locks:global`` besides ``locks:write``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from stitchwork.api.deps import EngineDep, require
from stitchwork.domain.locks import LockMode
from stitchwork.errors import NotFound
from stitchwork.services.auth import Principal, Scope
from stitchwork.services.executions import DEFAULT_REPO
from stitchwork.storage.locks import shared_repo

router = APIRouter(prefix="/locks", tags=["locks"])

Repo = Annotated[str, Query(min_length=1, max_length=500)]


class HoldCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    claims: list[str] = Field(min_length=1, max_length=256)
    mode: LockMode = LockMode.WRITE
    repo: str = Field(default=DEFAULT_REPO, min_length=1, max_length=500)


def _may_hold(principal: Principal, repo: str) -> None:
    """A hold on a shared checkout blocks every workspace's executions there."""
    if shared_repo(repo):
        principal.require(Scope.LOCKS_GLOBAL)


@router.get("")
async def list_locks(
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.LOCKS_READ)],
    repo: Repo = DEFAULT_REPO,
) -> dict[str, Any]:
    """Every claim held on the repository, with its owner (``<execution>/<node>`` or
    ``hold:<name>``) and mode. On a shared checkout another workspace's nodes show as
    ``another workspace``, without ids."""
    rows = await engine.executions.held_locks(principal.workspace_id, repo)
    return {
        "repo": repo,
        "items": [
            {
                "owner": r["owner"],
                "claim": r["claim"],
                "mode": r["mode"],
                "execution_id": str(r["execution_id"]) if r["execution_id"] else None,
                "node": r["node_id"],
                "acquired_at": r["acquired_at"].isoformat(),
            }
            for r in rows
        ],
    }


@router.post("", status_code=status.HTTP_201_CREATED)
async def hold_claims(
    body: HoldCreate,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.LOCKS_WRITE)],
) -> dict[str, Any]:
    """Hold claims by hand (for example while a person edits those files): nodes whose claims
    conflict do not start until the hold is released. 409 names the current holders."""
    _may_hold(principal, body.repo)
    claims = [(c, body.mode) for c in body.claims]
    held = await engine.executions.hold(principal.workspace_id, body.repo, body.name, claims)
    return {
        "repo": body.repo,
        "owner": f"hold:{body.name}",
        "held": [{"claim": h.claim, "mode": h.mode.value} for h in held],
    }


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def release_hold(
    name: str,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.LOCKS_WRITE)],
    repo: Repo = DEFAULT_REPO,
) -> Response:
    _may_hold(principal, repo)
    if not await engine.executions.release_hold(principal.workspace_id, repo, name):
        raise NotFound(f"no hold named {name!r} on repository {repo!r}", name=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
