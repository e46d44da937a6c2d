"""``/api/v1/locks``: a repository's lock table, and manual holds on claims."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from stitchwork.api.deps import EngineDep, PrincipalDep
from stitchwork.domain.locks import LockMode
from stitchwork.errors import NotFound
from stitchwork.services.executions import DEFAULT_REPO

router = APIRouter(prefix="/locks", tags=["locks"])

Repo = Annotated[str, Query(min_length=1, max_length=500)]


class HoldCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@-]+$")
    claims: list[str] = Field(min_length=1, max_length=256)
    mode: LockMode = LockMode.WRITE
    repo: str = Field(default=DEFAULT_REPO, min_length=1, max_length=500)


@router.get("")
async def list_locks(
    engine: EngineDep, _: PrincipalDep, repo: Repo = DEFAULT_REPO
) -> dict[str, Any]:
    """Every claim held on the repository, with its owner (``<execution>/<node>`` or
    ``hold:<name>``) and mode."""
    rows = await engine.executions.held_locks(repo)
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
    body: HoldCreate, engine: EngineDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Hold claims by hand (for example while a person edits those files): nodes whose claims
    conflict do not start until the hold is released. 409 names the current holders."""
    held = await engine.executions.hold(body.repo, body.name, [(c, body.mode) for c in body.claims])
    return {
        "repo": body.repo,
        "owner": f"hold:{body.name}",
        "held": [{"claim": h.claim, "mode": h.mode.value} for h in held],
    }


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def release_hold(
    name: str, engine: EngineDep, _: PrincipalDep, repo: Repo = DEFAULT_REPO
) -> Response:
    if not await engine.executions.release_hold(repo, name):
        raise NotFound(f"no hold named {name!r} on repository {repo!r}", name=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
