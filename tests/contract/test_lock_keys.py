"""Lock tables by workspace on both databases: the stitcher locks a named repository in its
workspace's table, and starvation reservations look only at executions of the same table."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from stitchwork.clock import FakeClock
from stitchwork.domain.executions import Dispatch
from stitchwork.domain.locks import LockMode
from stitchwork.runtime.engine import Engine
from stitchwork.storage.locks import lock_key
from tests.contract.test_executions import ACTOR, lock_rows, plan

WRITE = LockMode.WRITE


async def _blocked_execution(engine: Engine, workspace_id: uuid.UUID, repo: str) -> uuid.UUID:
    """A running pull-mode execution on ``repo`` whose only node is ready and blocked (by a
    hold on ``src/`` in the repository's lock table, taken when there is none yet)."""
    held = await engine.executions.held_locks(workspace_id, repo)
    if not held:
        await engine.executions.hold(workspace_id, repo, "edit", [("src/", WRITE)])
    ex = await engine.executions.create(
        workspace_id,
        plan([{"id": "edit", "claims": ["src/app.py"]}]),
        actor=ACTOR,
        dispatch=Dispatch.PULL,
        repo=repo,
        start=True,
    )
    taken = await engine.executions.next_node(workspace_id, ex.id, lease_owner="o", actor=ACTOR)
    assert taken is None  # blocked from now on
    return ex.id


async def test_the_stitcher_locks_a_named_repository_in_its_workspaces_table(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex = await engine.executions.create(
        workspace_id,
        plan([{"id": "edit", "claims": ["src/app.py"]}]),
        actor=ACTOR,
        dispatch=Dispatch.PULL,
        repo="shop",
        start=True,
    )
    await engine.executions.next_node(workspace_id, ex.id, lease_owner="orch", actor=ACTOR)

    assert [(r["repo"], r["owner"]) for r in await lock_rows(engine)] == [
        (f"{workspace_id}:shop", f"{ex.id}/edit")
    ]
    held = await engine.executions.held_locks(workspace_id, "shop")
    assert [r["owner"] for r in held] == [f"{ex.id}/edit"]


async def test_starved_nodes_of_a_name_are_those_of_its_workspace_only(
    clocked: Engine, clock: FakeClock, tmp_path: Path
) -> None:
    alpha = (await clocked.auth.ensure_workspace("alpha"))[0].id
    beta = (await clocked.auth.ensure_workspace("beta"))[0].id
    mine = await _blocked_execution(clocked, alpha, "shop")
    theirs = await _blocked_execution(clocked, beta, "shop")
    checkout = str(tmp_path)  # one hold blocks both workspaces' executions there
    on_path = [await _blocked_execution(clocked, ws, checkout) for ws in (alpha, beta)]
    clock.advance(timedelta(minutes=1))
    store = clocked.executions.stitcher.locks.store
    nobody = uuid.UUID(int=0)

    async with clocked.db.read() as conn:
        named = await store.starved_nodes(
            conn, lock_key(alpha, "shop"), blocked_before=clock.now(), exclude=nobody
        )
        shared = await store.starved_nodes(
            conn, lock_key(beta, checkout), blocked_before=clock.now(), exclude=nobody
        )

    assert named == [(mine, "edit")]
    assert theirs not in {execution_id for execution_id, _ in named}
    assert sorted(shared) == sorted((ex, "edit") for ex in on_path)
