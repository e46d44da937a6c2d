"""Executions and holds on both databases, by repository: a checkout's tree decides its claims
in both dispatch modes, and a refused request leaves a new repository fully usable."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from stitchwork.domain.executions import Dispatch, ExecutionStatus
from stitchwork.domain.locks import LockMode
from stitchwork.errors import Conflict, InvalidClaim
from stitchwork.runtime.engine import Engine
from tests.contract.agent_repos import make_repo
from tests.contract.test_executions import ACTOR, lock_rows, plan

WRITE = LockMode.WRITE
NODES = [
    # Jobs that stay running while nothing works the queue: what runs is what started.
    {"id": "dir", "type": "sleep", "payload": {"seconds": 60}, "claims": ["lib/v1.2"]},
    {"id": "file", "type": "sleep", "payload": {"seconds": 60}, "claims": ["lib/v1.2/x.py"]},
]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A real git repository where ``lib/v1.2`` is a directory (its name reads like a file)."""
    return make_repo(tmp_path / "repo", {"lib/v1.2/x.py": "", "README.md": ""}, config=None)


def statuses(ex: Any) -> dict[str, str]:
    return {n.node_id: n.status for n in ex.nodes}


async def test_jobs_dispatch_never_runs_a_dotted_directory_and_its_file_together(
    engine: Engine, workspace_id: uuid.UUID, checkout: Path
) -> None:
    ex = await engine.executions.create(
        workspace_id, plan(NODES, concurrency=2), actor=ACTOR, repo=str(checkout), start=True
    )
    assert statuses(ex) == {"dir": "running", "file": "ready"}
    await engine.executions.stitcher.advance(ex.id)  # another scheduling round
    ex = await engine.executions.get(workspace_id, ex.id)
    assert statuses(ex) == {"dir": "running", "file": "ready"}
    assert [n.job_id is not None for n in ex.nodes] == [True, False]
    events = await engine.executions.events(workspace_id, ex.id)
    contended = [e.payload for e in events if e.type == "lock.contended"]
    assert [(c["node"], c["holders"]) for c in contended] == [("file", [f"{ex.id}/dir"])]


async def test_on_a_plain_name_the_naming_rule_lets_both_run(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex = await engine.executions.create(
        workspace_id, plan(NODES, concurrency=2), actor=ACTOR, repo="shop", start=True
    )
    assert statuses(ex) == {"dir": "running", "file": "running"}


async def test_pull_dispatch_hands_out_only_one_of_a_dotted_directory_and_its_file(
    engine: Engine, workspace_id: uuid.UUID, checkout: Path
) -> None:
    nodes = [{"id": n["id"], "claims": n["claims"]} for n in NODES]
    ex = await engine.executions.create(
        workspace_id,
        plan(nodes, concurrency=2),
        actor=ACTOR,
        dispatch=Dispatch.PULL,
        repo=str(checkout),
        start=True,
    )
    grants = await engine.executions.next_nodes(
        workspace_id, ex.id, lease_owner="orch", actor=ACTOR, limit=2
    )
    assert [g.node_id for g in grants] == ["dir"]
    await engine.executions.complete_node(workspace_id, ex.id, "dir", actor=ACTOR)
    grants = await engine.executions.next_nodes(
        workspace_id, ex.id, lease_owner="orch", actor=ACTOR, limit=2
    )
    assert [g.node_id for g in grants] == ["file"]


async def test_a_hold_on_a_dotted_directory_blocks_its_files_in_that_checkout(
    engine: Engine, workspace_id: uuid.UUID, checkout: Path
) -> None:
    await engine.executions.hold(workspace_id, str(checkout), "alice", [("lib/v1.2", WRITE)])
    with pytest.raises(Conflict, match="hold:alice"):
        await engine.executions.hold(workspace_id, str(checkout), "bob", [("lib/v1.2/x.py", WRITE)])
    ex = await engine.executions.create(
        workspace_id, plan(NODES[1:]), actor=ACTOR, repo=str(checkout), start=True
    )
    assert statuses(ex) == {"file": "ready"}
    # Waves on the execution classify claims as its scheduler does.
    waves = await engine.executions.waves(
        workspace_id,
        (
            await engine.executions.create(
                workspace_id, plan(NODES, concurrency=2), actor=ACTOR, repo=str(checkout)
            )
        ).id,
        2,
    )
    assert waves.waves == [["dir"], ["file"]]


async def test_a_refused_first_hold_leaves_a_new_repository_fully_usable(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    repo = "never-used-before"
    with pytest.raises(InvalidClaim):
        await engine.executions.hold(workspace_id, repo, "eve", [("../etc", WRITE)])

    held = await engine.executions.hold(workspace_id, repo, "alice", [("src/", WRITE)])
    assert [(h.claim, h.mode) for h in held] == [("src/", WRITE)]
    assert await engine.executions.release_hold(workspace_id, repo, "alice") == 1

    jobs = await engine.executions.create(
        workspace_id,
        plan([{"id": "a", "claims": ["src/"]}, {"id": "b", "claims": ["docs/"]}], concurrency=2),
        actor=ACTOR,
        repo=repo,
        start=True,
    )
    assert statuses(jobs) == {"a": "running", "b": "running"}
    pulled = await engine.executions.create(
        workspace_id,
        plan([{"id": "p", "claims": ["lib/"]}]),
        actor=ACTOR,
        dispatch=Dispatch.PULL,
        repo=repo,
        start=True,
    )
    grant = await engine.executions.next_node(
        workspace_id, pulled.id, lease_owner="orch", actor=ACTOR
    )
    assert grant is not None
    assert grant.node_id == "p"
    done = await engine.executions.complete_node(workspace_id, pulled.id, "p", actor=ACTOR)
    assert done.status is ExecutionStatus.COMPLETED


async def test_a_hold_whose_transaction_rolls_back_leaves_no_lock_in_memory(
    engine: Engine, workspace_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.executions.hold(
        workspace_id, "fresh", "first", [("docs/", WRITE)]
    )  # the table is cached
    assert await engine.executions.release_hold(workspace_id, "fresh", "first") == 1
    store = engine.executions.stitcher.locks.store
    insert_locks = store.insert_locks

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(store, "insert_locks", broken)
    with pytest.raises(RuntimeError):
        await engine.executions.hold(workspace_id, "fresh", "alice", [("src/**", WRITE)])
    monkeypatch.setattr(store, "insert_locks", insert_locks)

    # alice's claims were acquired in memory before the insert failed: none of it may stay.
    held = await engine.executions.hold(workspace_id, "fresh", "bob", [("src/a.ts", WRITE)])
    assert [h.owner for h in held] == ["hold:bob"]
    assert [(r["owner"], r["claim"]) for r in await lock_rows(engine)] == [("hold:bob", "src/a.ts")]
