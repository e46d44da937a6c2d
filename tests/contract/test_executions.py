"""Executions on both databases: claims and locks, failure policies, abort, pull mode."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from stitchwork.clock import FakeClock
from stitchwork.domain.dag import NodeStatus
from stitchwork.domain.executions import Dispatch, ExecutionStatus
from stitchwork.domain.locks import LockMode
from stitchwork.domain.plans import parse_plan
from stitchwork.errors import Conflict, CycleError, InvalidTransition
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import resource_locks
from tests.conftest import Backend

ACTOR = "test"


def plan(nodes: list[dict[str, Any]], edges: list[list[str]] | None = None, **extra: Any) -> Any:
    return parse_plan_data({"nodes": nodes, "edges": edges or [], **extra})


def parse_plan_data(data: dict[str, Any]) -> Any:
    return parse_plan(json.dumps(data), format="json")


async def pull_execution(engine: Engine, ws: uuid.UUID, p: Any) -> uuid.UUID:
    ex = await engine.executions.create(ws, p, actor=ACTOR, dispatch=Dispatch.PULL, start=True)
    return ex.id


async def take(engine: Engine, ws: uuid.UUID, ex_id: uuid.UUID) -> str | None:
    grant = await engine.executions.next_node(ws, ex_id, lease_owner="orch", actor=ACTOR)
    return None if grant is None else grant.node_id


async def finish(engine: Engine, ws: uuid.UUID, ex_id: uuid.UUID, node: str) -> Any:
    return await engine.executions.complete_node(ws, ex_id, node, actor=ACTOR)


async def lock_rows(engine: Engine) -> list[Any]:
    async with engine.db.read() as conn:
        return list((await conn.execute(select(resource_locks))).mappings())


async def test_two_writers_of_one_file_run_one_after_the_other(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan(
        [
            {"id": "a", "claims": ["src/app.py"]},
            {"id": "b", "claims": ["src/app.py"]},
            {"id": "c", "claims": ["docs/"]},
        ],
        concurrency=3,
    )
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "a"
    assert await take(engine, workspace_id, ex_id) == "c"  # b is blocked by a, c is not
    assert await take(engine, workspace_id, ex_id) is None
    held = {(r["node_id"], r["claim"], r["mode"]) for r in await lock_rows(engine)}
    assert held == {("a", "src/app.py", "write"), ("c", "docs/", "write")}
    await finish(engine, workspace_id, ex_id, "a")
    assert await take(engine, workspace_id, ex_id) == "b"
    await finish(engine, workspace_id, ex_id, "b")
    ex = await finish(engine, workspace_id, ex_id, "c")
    assert ex.status is ExecutionStatus.COMPLETED
    assert await lock_rows(engine) == []
    events = await engine.executions.events(workspace_id, ex_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count("execution.completed") == 1
    contended = [e for e in events if e.type == "lock.contended"]
    assert [e.payload["node"] for e in contended] == ["b"]
    assert contended[0].payload["holders"] == [f"{ex_id}/a"]


async def test_readers_of_one_path_run_together(engine: Engine, workspace_id: uuid.UUID) -> None:
    p = plan(
        [
            {"id": "r1", "claims": ["src/**"], "mode": "read"},
            {"id": "r2", "claims": ["src/a.ts"], "mode": "analysis"},
            {"id": "w", "claims": ["src/a.ts"], "mode": "write"},
        ],
        concurrency=3,
    )
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "r1"
    assert await take(engine, workspace_id, ex_id) == "r2"
    assert await take(engine, workspace_id, ex_id) is None  # the writer waits for both


async def test_a_directory_writer_blocks_a_file_writer_beneath_it(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan(
        [{"id": "tree", "claims": ["src/**"]}, {"id": "file", "claims": ["src/a.ts"]}],
        concurrency=2,
    )
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "tree"
    assert await take(engine, workspace_id, ex_id) is None
    await finish(engine, workspace_id, ex_id, "tree")
    assert await take(engine, workspace_id, ex_id) == "file"


async def test_locks_are_shared_by_executions_on_one_repository(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    first = await pull_execution(engine, workspace_id, plan([{"id": "x", "claims": ["lib/"]}]))
    second = await pull_execution(engine, workspace_id, plan([{"id": "y", "claims": ["lib/z"]}]))
    assert await take(engine, workspace_id, first) == "x"
    assert await take(engine, workspace_id, second) is None
    await finish(engine, workspace_id, first, "x")
    assert await take(engine, workspace_id, second) == "y"


async def test_dependents_become_ready_only_after_all_dependencies_complete(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan([{"id": "a"}, {"id": "b"}, {"id": "c"}], [["a", "c"], ["b", "c"]], concurrency=3)
    ex_id = await pull_execution(engine, workspace_id, p)
    assert {await take(engine, workspace_id, ex_id), await take(engine, workspace_id, ex_id)} == {
        "a",
        "b",
    }
    assert await take(engine, workspace_id, ex_id) is None
    await finish(engine, workspace_id, ex_id, "a")
    assert await take(engine, workspace_id, ex_id) is None
    await finish(engine, workspace_id, ex_id, "b")
    assert await take(engine, workspace_id, ex_id) == "c"


async def test_fail_fast_fails_the_execution_and_it_stays_failed(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan([{"id": "a", "claims": ["x"]}, {"id": "b"}, {"id": "c"}], [["a", "c"]], concurrency=2)
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "a"
    assert await take(engine, workspace_id, ex_id) == "b"
    ex = await engine.executions.fail_node(workspace_id, ex_id, "a", actor=ACTOR, error="boom")
    assert ex.status is ExecutionStatus.FAILED
    assert ex.counts == {"failed": 1, "cancelled": 2}
    ex = await engine.executions.get(workspace_id, ex_id)
    statuses = {n.node_id: n.status for n in ex.nodes}
    assert statuses == {"a": "failed", "b": "cancelled", "c": "cancelled"}
    assert await lock_rows(engine) == []
    with pytest.raises(InvalidTransition):
        await engine.executions.resume(workspace_id, ex_id, actor=ACTOR)
    with pytest.raises(InvalidTransition):
        await engine.executions.complete_node(workspace_id, ex_id, "b", actor=ACTOR)
    assert (await engine.executions.get(workspace_id, ex_id)).status is ExecutionStatus.FAILED
    events = await engine.executions.events(workspace_id, ex_id)
    assert [e.type for e in events].count("execution.failed") == 1


async def test_continue_skips_only_the_dependents_of_a_failed_node(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan(
        [{"id": "a"}, {"id": "a2"}, {"id": "b"}, {"id": "b2"}],
        [["a", "a2"], ["b", "b2"]],
        concurrency=2,
        failure_policy="continue",
    )
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "a"
    assert await take(engine, workspace_id, ex_id) == "b"
    await engine.executions.fail_node(workspace_id, ex_id, "a", actor=ACTOR, error="boom")
    await finish(engine, workspace_id, ex_id, "b")
    assert await take(engine, workspace_id, ex_id) == "b2"
    await finish(engine, workspace_id, ex_id, "b2")
    ex = await engine.executions.get(workspace_id, ex_id)
    assert {n.node_id: n.status for n in ex.nodes} == {
        "a": "failed",
        "a2": "skipped",
        "b": "completed",
        "b2": "completed",
    }
    assert ex.status is ExecutionStatus.FAILED


async def test_an_aborted_execution_leaves_no_locks_and_cancels_the_rest(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    p = plan([{"id": "a", "claims": ["src/"]}, {"id": "b"}], [["a", "b"]])
    ex_id = await pull_execution(engine, workspace_id, p)
    assert await take(engine, workspace_id, ex_id) == "a"
    assert await lock_rows(engine)
    ex = await engine.executions.abort(workspace_id, ex_id, actor=ACTOR)
    assert ex.status is ExecutionStatus.ABORTED
    assert {n.status for n in ex.nodes} == {NodeStatus.CANCELLED.value}
    assert await lock_rows(engine) == []
    assert await take(engine, workspace_id, ex_id) is None
    with pytest.raises(InvalidTransition):
        await engine.executions.abort(workspace_id, ex_id, actor=ACTOR)


async def test_a_paused_execution_hands_out_nothing_until_resumed(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex_id = await pull_execution(engine, workspace_id, plan([{"id": "a"}]))
    await engine.executions.pause(workspace_id, ex_id, actor=ACTOR)
    assert await take(engine, workspace_id, ex_id) is None
    with pytest.raises(InvalidTransition, match="use resume"):
        await engine.executions.start(workspace_id, ex_id, actor=ACTOR)
    await engine.executions.resume(workspace_id, ex_id, actor=ACTOR)
    assert await take(engine, workspace_id, ex_id) == "a"


async def test_a_node_leased_to_one_orchestrator_cannot_be_completed_by_another(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex_id = await pull_execution(engine, workspace_id, plan([{"id": "a"}]))
    await take(engine, workspace_id, ex_id)
    with pytest.raises(Conflict, match="leased to another"):
        await engine.executions.complete_node(
            workspace_id, ex_id, "a", actor=ACTOR, lease_owner="intruder"
        )


async def test_a_job_dispatch_execution_refuses_pull_calls(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex = await engine.executions.create(workspace_id, plan([{"id": "a"}]), actor=ACTOR)
    with pytest.raises(Conflict, match="runs its nodes as jobs"):
        await engine.executions.next_node(workspace_id, ex.id, lease_owner="o", actor=ACTOR)


def test_a_cyclic_plan_is_rejected_naming_the_cycle() -> None:
    with pytest.raises(CycleError) as caught:
        plan([{"id": "a"}, {"id": "b"}, {"id": "c"}], [["a", "b"], ["b", "c"], ["c", "a"]])
    assert caught.value.cycle == ["a", "b", "c", "a"]


async def test_a_hold_that_will_never_release_is_reported_as_a_deadlock(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    await engine.executions.hold(workspace_id, "default", "alice", [("src/**", LockMode.WRITE)])
    p = plan([{"id": "edit", "claims": ["src/a.ts"]}, {"id": "later"}], [["edit", "later"]])
    ex = await engine.executions.create(workspace_id, p, actor=ACTOR, start=True)
    advanced = await engine.executions.stitcher.advance(ex.id)
    assert advanced is not None
    assert advanced.status is ExecutionStatus.PAUSED
    events = await engine.executions.events(workspace_id, ex.id)
    deadlock = next(e for e in events if e.type == "execution.deadlock")
    assert deadlock.payload["blocked"] == {"edit": ["hold:alice"]}
    assert deadlock.payload["holders"] == ["hold:alice"]
    assert events[-1].type == "execution.paused"
    # Released by hand and resumed, the execution goes on.
    assert await engine.executions.release_hold(workspace_id, "default", "alice") == 1
    resumed = await engine.executions.resume(workspace_id, ex.id, actor=ACTOR)
    assert {n.node_id: n.status for n in resumed.nodes}["edit"] == "running"


async def test_waiting_for_a_running_node_is_not_a_deadlock(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    holder = await pull_execution(engine, workspace_id, plan([{"id": "h", "claims": ["src/"]}]))
    assert await take(engine, workspace_id, holder) == "h"
    waiter = await pull_execution(engine, workspace_id, plan([{"id": "w", "claims": ["src/x"]}]))
    advanced = await engine.executions.stitcher.advance(waiter)
    assert advanced is not None
    assert advanced.status is ExecutionStatus.RUNNING
    events = await engine.executions.events(workspace_id, waiter)
    assert "execution.deadlock" not in [e.type for e in events]


async def test_a_hold_on_taken_claims_is_refused_naming_the_holder(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    ex_id = await pull_execution(engine, workspace_id, plan([{"id": "a", "claims": ["lib/"]}]))
    await take(engine, workspace_id, ex_id)
    with pytest.raises(Conflict, match=f"{ex_id}/a"):
        await engine.executions.hold(workspace_id, "default", "bob", [("lib/x.py", LockMode.READ)])
    assert len(await lock_rows(engine)) == 1  # nothing of the refused hold was kept


async def test_a_node_blocked_too_long_gets_the_locks_at_their_next_release(
    backend: Backend,
) -> None:
    clock = FakeClock()
    engine = await backend.open_engine(starvation_after=timedelta(seconds=30), clock=clock)
    try:
        ws, _ = await engine.auth.ensure_workspace("default")
        p = plan(
            [
                {"id": "a", "claims": ["src/a.ts"]},
                {"id": "tree", "claims": ["src/**"]},
                {"id": "b", "claims": ["src/b.ts"]},
                {"id": "c", "claims": ["src/c.ts"]},
            ],
            concurrency=3,
        )
        ex_id = await pull_execution(engine, ws.id, p)
        assert await take(engine, ws.id, ex_id) == "a"
        assert await take(engine, ws.id, ex_id) == "b"  # tree is blocked by a: skipped
        clock.advance(timedelta(seconds=31))  # tree has now waited longer than starvation_after
        # c could lock src/c.ts, but that would keep the starved tree waiting: it is held back.
        assert await take(engine, ws.id, ex_id) is None
        await finish(engine, ws.id, ex_id, "a")
        assert await take(engine, ws.id, ex_id) is None  # b still holds src/b.ts
        await finish(engine, ws.id, ex_id, "b")
        assert await take(engine, ws.id, ex_id) == "tree"
        await finish(engine, ws.id, ex_id, "tree")
        assert await take(engine, ws.id, ex_id) == "c"
        debug = await engine.executions.debug(ws.id, ex_id)
        tree = next(n for n in debug.execution.nodes if n.node_id == "tree")
        assert tree.lock_wait_s >= 31
        assert tree.contentions == 1
    finally:
        await engine.close()
