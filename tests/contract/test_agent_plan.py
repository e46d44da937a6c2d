"""A plan of agent tasks on one real repository, through the scheduler and a real worker:
two parallel branches with overlapping claims run to completion, every task's commit lands
on main, and no two tasks with conflicting claims ever ran at the same time."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stitchwork.domain.claims import overlaps
from stitchwork.domain.executions import ExecutionStatus
from stitchwork.domain.plans import parse_plan
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.agent_repos import git, log, make_repo, show
from tests.contract.helpers import wait_until


@pytest.fixture
async def engine(sqlite_backend: Backend) -> AsyncIterator[Engine]:
    eng = await sqlite_backend.open_engine()
    worker = eng.worker(concurrency=3)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(eng.scheduler().run())]
    try:
        yield eng
    finally:
        worker.stop()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await eng.close()


def task(
    node_id: str, claims: list[str], path: str, after: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "id": node_id,
        "title": f"task {node_id}",
        "job_type": "agent-task",
        "claims": claims,
        "after": after,
        "payload": {
            "prompt": f"Task {node_id}: edit {path}",
            "script": [{"sleep": 0.3}, {"append": path, "content": f"{node_id}\n"}],
            **extra,
        },
    }


async def test_a_six_task_plan_with_parallel_branches_lands_every_commit_without_conflicts(
    engine: Engine, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {
            "src/core/base.py": "",
            "src/api/routes.py": "",
            "src/api/models.py": "",
            "docs/api.md": "",
            "README.md": "",
        },
    )
    nodes = [
        task("core", ["src/core/**"], "src/core/base.py", []),
        # Two branches after core; api-models and api-routes overlap (src/api/**).
        task("api-models", ["src/api/**"], "src/api/models.py", ["core"]),
        task("api-models-docs", ["docs/api.md"], "docs/api.md", ["api-models"]),
        task("api-routes", ["src/api/routes.py"], "src/api/routes.py", ["core"]),
        task("routes-docs", ["docs/**"], "docs/api.md", ["api-routes"]),
        task("readme", ["README.md"], "README.md", ["api-models-docs", "routes-docs"]),
    ]
    edges = [[dep, n["id"]] for n in nodes for dep in n.pop("after")]
    plan = parse_plan(json.dumps({"name": "six", "concurrency": 3, "nodes": nodes, "edges": edges}))
    workspace, _ = await engine.auth.ensure_workspace("default")
    # The execution's repository (a path) is where its agent tasks run.
    ex = await engine.executions.create(
        workspace.id, plan, actor="test", repo=str(repo), start=True
    )

    async def ended() -> bool:
        got = await engine.executions.get(workspace.id, ex.id)
        return got.status not in (ExecutionStatus.RUNNING, ExecutionStatus.PLANNED)

    await wait_until(ended, what="the execution to end", timeout=90, interval=0.1)
    done = await engine.executions.get(workspace.id, ex.id)
    assert done.status is ExecutionStatus.COMPLETED, [(n.node_id, n.error) for n in done.nodes]

    # Every task's commit is on main, each merged by its own merge commit.
    subjects = log(repo)
    for n in nodes:
        assert n["payload"]["prompt"] in subjects
    assert sum(s.startswith("Merge stitchwork/") for s in subjects) == 6
    assert show(repo, "main", "docs/api.md").splitlines() in (
        ["api-models-docs", "routes-docs"],
        ["routes-docs", "api-models-docs"],
    )
    assert git(repo, "status", "--porcelain") == ""

    # From the events: no two tasks whose write claims overlap were ever running together.
    events = await engine.executions.events(workspace.id, ex.id, limit=10_000)
    running: set[str] = set()
    claims = {n["id"]: n["claims"] for n in nodes}
    together: set[frozenset[str]] = set()
    for event in events:
        node = event.payload.get("node")
        if event.type == "task.started":
            for other in running:
                assert not any(
                    overlaps(a, b) for a, b in itertools.product(claims[node], claims[other])
                ), f"{node} started while {other} held overlapping claims"
                together.add(frozenset((node, other)))
            running.add(node)
        elif event.type in ("task.completed", "task.failed", "task.cancelled"):
            running.discard(node)
    assert frozenset(("api-routes", "api-models")) not in together
    assert together  # and tasks that could run in parallel did
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # gapless: nothing was missed
