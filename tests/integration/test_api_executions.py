"""The executions API: plans run as jobs, pull mode under concurrent callers, bad input."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stitchwork.domain.claims import overlaps
from stitchwork.domain.locks import modes_conflict
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.integration.conftest import ClientFactory, _client, workspace_key

FIXTURE = Path(__file__).parents[1] / "fixtures" / "milestones.md"


@pytest.fixture
async def running_engine(engine: Engine) -> AsyncIterator[Engine]:
    """The engine with a worker and the scheduler running, as ``stitchwork serve`` runs them."""
    worker = engine.worker(concurrency=4)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(engine.scheduler().run())]
    try:
        yield engine
    finally:
        worker.stop()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_status(api: httpx.AsyncClient, ex_id: str, wanted: set[str]) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            body = (await api.get(f"/api/v1/executions/{ex_id}")).json()
            if body["status"] in wanted:
                return body
            await asyncio.sleep(0.05)


async def wait_job(api: httpx.AsyncClient, job_id: str, wanted: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await api.get(f"/api/v1/jobs/{job_id}")).json()["status"] == wanted:
                return
            await asyncio.sleep(0.05)


async def test_a_plan_runs_as_jobs_in_dependency_order(
    running_engine: Engine, api: httpx.AsyncClient
) -> None:
    plan = {
        "concurrency": 2,
        "nodes": [
            {"id": "build", "type": "noop", "claims": ["src/"]},
            {"id": "docs", "type": "noop", "claims": ["docs/"]},
            {"id": "test", "type": "noop", "depends_on": ["build"], "claims": ["src/"]},
            {"id": "ship", "type": "noop", "depends_on": ["test", "docs"]},
        ],
    }
    created = await api.post("/api/v1/executions", json={"plan": plan, "start": True})
    assert created.status_code == 201, created.text
    ex = await wait_status(api, created.json()["id"], {"completed", "failed"})
    assert ex["status"] == "completed"
    nodes = {n["id"]: n for n in ex["nodes"]}
    assert all(n["status"] == "completed" and n["job_id"] for n in nodes.values())
    for node in nodes.values():
        for dep in node["depends_on"]:
            assert nodes[dep]["completed_at"] <= node["started_at"]
    job = (await api.get(f"/api/v1/jobs/{nodes['ship']['job_id']}")).json()
    assert job["status"] == "completed"
    events = (await api.get(f"/api/v1/executions/{ex['id']}/events")).json()["items"]
    types = [e["type"] for e in events]
    assert types[0] == "execution.planned"
    assert types[-1] == "execution.completed"
    assert types.count("task.started") == 4
    assert types.count("execution.completed") == 1
    metrics = (await api.get(f"/api/v1/executions/{ex['id']}/metrics")).json()
    assert metrics["nodes_completed"] == 4
    assert 1 <= metrics["peak_concurrency"] <= 2


async def test_a_failing_job_fails_its_node_and_the_execution(
    running_engine: Engine, api: httpx.AsyncClient
) -> None:
    plan = {
        "nodes": [
            {"id": "bad", "type": "shell", "payload": {"command": ["false"]}},
            {"id": "after", "type": "noop", "depends_on": ["bad"]},
        ]
    }
    created = await api.post("/api/v1/executions", json={"plan": plan, "start": True})
    ex = await wait_status(api, created.json()["id"], {"completed", "failed"})
    assert ex["status"] == "failed"
    nodes = {n["id"]: n for n in ex["nodes"]}
    assert nodes["bad"]["status"] == "failed"
    assert nodes["bad"]["error"]
    assert nodes["after"]["status"] == "cancelled"


async def test_the_milestone_table_imports_and_previews_waves(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/executions/import",
        content=FIXTURE.read_text(),
        headers={"Content-Type": "text/markdown"},
    )
    assert response.status_code == 201, response.text
    ex = response.json()
    assert ex["status"] == "planned"
    assert len(ex["nodes"]) == 18
    waves = (await api.get(f"/api/v1/executions/{ex['id']}/waves?agents=2")).json()
    wave_of = {node: i for i, wave in enumerate(waves["waves"]) for node in wave}
    assert sorted(wave_of) == sorted(n["id"] for n in ex["nodes"])
    assert all(len(wave) <= 2 for wave in waves["waves"])
    for node in ex["nodes"]:
        for dep in node["depends_on"]:
            assert wave_of[dep] < wave_of[node["id"]]
    assert waves["critical_path_length"] == len(waves["critical_path"]) >= 2


async def test_concurrent_next_calls_never_exceed_the_limit(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    plan = {"concurrency": 10, "nodes": [{"id": f"n{i}"} for i in range(50)]}
    ex = (
        await api.post("/api/v1/executions", json={"plan": plan, "dispatch": "pull", "start": True})
    ).json()
    replies = await asyncio.gather(
        *(api.post(f"/api/v1/executions/{ex['id']}/next", json={}) for _ in range(100))
    )
    assert {r.status_code for r in replies} == {200}
    granted = [r.json()["node"]["node_id"] for r in replies if r.json()["node"]]
    assert len(granted) == 10
    assert len(set(granted)) == 10


async def test_random_claims_never_run_in_conflict(api: httpx.AsyncClient, engine: Engine) -> None:
    rng = random.Random(7)
    paths = ["src/a.ts", "src/b.ts", "src/**", "src/*.ts", "docs/", "docs/x.md", "lib", "**/*.md"]
    nodes = [
        {
            "id": f"n{i}",
            "claims": rng.sample(paths, rng.randint(1, 2)),
            "mode": rng.choice(["read", "write", "analysis"]),
        }
        for i in range(30)
    ]
    plan = {"concurrency": 6, "nodes": nodes}
    ex = (
        await api.post("/api/v1/executions", json={"plan": plan, "dispatch": "pull", "start": True})
    ).json()
    by_id = {n["id"]: n for n in nodes}
    running: set[str] = set()
    done = 0
    while done < len(nodes):
        replies = await asyncio.gather(
            *(api.post(f"/api/v1/executions/{ex['id']}/next", json={}) for _ in range(4))
        )
        running |= {r.json()["node"]["node_id"] for r in replies if r.json()["node"]}
        for a in running:  # checked on every transition
            for b in running - {a}:
                na, nb = by_id[a], by_id[b]
                if modes_conflict(na["mode"], nb["mode"]):
                    assert not any(overlaps(x, y) for x in na["claims"] for y in nb["claims"])
        assert running, "nothing runs and nothing can start"
        finished = rng.choice(sorted(running))
        reply = await api.post(f"/api/v1/executions/{ex['id']}/nodes/{finished}/complete")
        assert reply.status_code == 200, reply.text
        running.discard(finished)
        done += 1
    final = (await api.get(f"/api/v1/executions/{ex['id']}")).json()
    assert final["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": {"nodes": [{"id": "a"}, {"id": "a"}]}}, "nodes[1].id"),
        ({"plan": {"nodes": [{"id": "a", "claims": ["/etc/passwd"]}]}}, "nodes[0].claims[0]"),
        ({"plan": {"nodes": [{"id": "a", "type": "no-such-type"}]}}, "nodes[0].type"),
        ({"plan": {"nodes": [{"id": "a"}], "concurrency": 0}}, "concurrency"),
        ({"plan": {"nodes": [{"id": "a"}], "edges": [{"from": "a", "to": "zz"}]}}, "edges[0]"),
    ],
)
async def test_an_invalid_plan_is_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await api.post("/api/v1/executions", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == field, problem
    assert (await api.get("/api/v1/executions")).json()["items"] == []


async def test_the_list_shows_node_counts_without_nodes(api: httpx.AsyncClient) -> None:
    plan = {"nodes": [{"id": "a"}, {"id": "b", "depends_on": ["a"]}]}
    await api.post("/api/v1/executions", json={"plan": plan, "dispatch": "pull", "start": True})
    [item] = (await api.get("/api/v1/executions")).json()["items"]
    assert item["counts"] == {"ready": 1, "pending": 1}
    assert item["nodes"] == []


async def test_a_cycle_is_refused_with_the_cycle_named(api: httpx.AsyncClient) -> None:
    plan = {"nodes": [{"id": "a", "depends_on": ["b"]}, {"id": "b", "depends_on": ["a"]}]}
    response = await api.post("/api/v1/executions", json={"plan": plan})
    assert response.status_code == 422
    assert response.json()["cycle"] in (["a", "b", "a"], ["b", "a", "b"])


async def test_unknown_and_foreign_executions_are_404(
    api: httpx.AsyncClient, client_for: ClientFactory
) -> None:
    ex = (await api.post("/api/v1/executions", json={"plan": {"nodes": [{"id": "a"}]}})).json()
    other = await client_for("other")
    for client, ex_id in (
        (api, "018f0000-0000-7000-8000-000000000000"),
        (other, ex["id"]),
    ):
        for path in ("", "/debug", "/waves", "/events", "/metrics"):
            response = await client.get(f"/api/v1/executions/{ex_id}{path}")
            assert response.status_code == 404, (path, response.text)
        assert (await client.post(f"/api/v1/executions/{ex_id}/abort")).status_code == 404


async def test_debug_shows_the_lock_table_and_who_waits_for_whom(api: httpx.AsyncClient) -> None:
    plan = {
        "concurrency": 2,
        "nodes": [{"id": "a", "claims": ["x/"]}, {"id": "b", "claims": ["x/y"]}],
    }
    ex = (
        await api.post("/api/v1/executions", json={"plan": plan, "dispatch": "pull", "start": True})
    ).json()
    await api.post(f"/api/v1/executions/{ex['id']}/next", json={})
    await api.post(f"/api/v1/executions/{ex['id']}/next", json={})
    debug = (await api.get(f"/api/v1/executions/{ex['id']}/debug")).json()
    assert debug["ready"] == ["b"]
    assert [r["node"] for r in debug["running"]] == ["a"]
    assert [(lock["node"], lock["claim"], lock["mode"]) for lock in debug["locks"]] == [
        ("a", "x/", "write")
    ]
    assert debug["wait_for"] == {"b": [f"{ex['id']}/a"]}
    assert [e["type"] for e in debug["events"]][-1] == "lock.contended"


async def test_start_twice_and_unknown_actions_are_refused(api: httpx.AsyncClient) -> None:
    ex = (await api.post("/api/v1/executions", json={"plan": {"nodes": [{"id": "a"}]}})).json()
    assert (await api.post(f"/api/v1/executions/{ex['id']}/start")).status_code == 200
    again = await api.post(f"/api/v1/executions/{ex['id']}/start")
    assert again.status_code == 409
    assert "running" in again.json()["detail"]
    assert (await api.post(f"/api/v1/executions/{ex['id']}/explode")).status_code == 422
    empty = await api.post("/api/v1/executions/import", content=b"  ")
    assert empty.status_code == 422
    assert empty.json()["errors"][0]["field"] == "body"


async def test_manual_holds_are_listed_refused_on_conflict_and_released(
    api: httpx.AsyncClient,
) -> None:
    created = await api.post("/api/v1/locks", json={"name": "alice", "claims": ["src/**"]})
    assert created.status_code == 201, created.text
    assert created.json()["held"] == [{"claim": "src/**", "mode": "write"}]
    clash = await api.post("/api/v1/locks", json={"name": "bob", "claims": ["src/a.ts"]})
    assert clash.status_code == 409
    assert "hold:alice" in clash.json()["detail"]
    listed = (await api.get("/api/v1/locks")).json()["items"]
    assert [(lock["owner"], lock["claim"]) for lock in listed] == [("hold:alice", "src/**")]
    bad = await api.post("/api/v1/locks", json={"name": "eve", "claims": ["../etc"]})
    assert bad.status_code == 422
    assert (await api.delete("/api/v1/locks/alice")).status_code == 204
    assert (await api.delete("/api/v1/locks/alice")).status_code == 404
    assert (await api.get("/api/v1/locks")).json()["items"] == []


async def test_metrics_come_as_json_and_as_prometheus_text(
    running_engine: Engine, api: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job = (
        await api.post("/api/v1/jobs", json={"type": "shell", "payload": {"command": ["true"]}})
    ).json()
    await wait_job(api, job["id"], "completed")
    figures = (await api.get("/api/v1/metrics")).json()
    assert figures["jobs_by_status"]["completed"] == 1
    assert figures["process"]["rss_bytes"] > 0
    assert (await anonymous.get("/api/v1/metrics")).status_code == 401
    text = (await anonymous.get("/metrics")).text
    assert 'stitchwork_jobs{status="completed"} 1.0' in text
    assert 'stitchwork_job_duration_seconds_count{outcome="completed",type="shell"} 1.0' in text
    assert 'stitchwork_step_duration_seconds_count{status="completed",type="command"} 1.0' in text
    assert "stitchwork_locks_held 0.0" in text


async def test_health_counts_stalled_executions_and_metrics_name_them(backend: Backend) -> None:
    # Nothing runs the queued job of this execution: once it has been quiet for longer than
    # STITCHWORK_STALL_AFTER, it is reported as stalled.
    stall_after = 1.0
    engine = await backend.open_engine(stall_after=timedelta(seconds=stall_after))
    try:
        key = await workspace_key(engine, "default")
        async with _client(engine, key) as api, _client(engine, None) as anonymous:
            started = time.monotonic()
            created = await api.post(
                "/api/v1/executions", json={"plan": {"nodes": [{"id": "a"}]}, "start": True}
            )
            health = await anonymous.get("/api/v1/health")
            quiet_for = time.monotonic() - started
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "ok"
            assert body["database"]["ok"] is True
            assert body["executions"]["running"] == 1
            assert body["process"]["rss_bytes"] > 0
            # On a loaded machine the two requests alone may outlast STALL_AFTER; only a
            # health report taken inside the window must not call the execution stalled.
            if quiet_for < stall_after:
                assert body["stalled"] == 0
            await asyncio.sleep(stall_after + 0.1)  # the last event came before `health`
            # Without a key: how many, never which.
            health = await anonymous.get("/api/v1/health")
            assert health.json()["stalled"] == 1
            assert created.json()["id"] not in health.text
            # With the workspace's key: which.
            stalled = (await api.get("/api/v1/metrics")).json()["stalled"]
            assert [s["id"] for s in stalled] == [created.json()["id"]]
    finally:
        await engine.close()


async def test_next_takes_several_nodes_and_report_records_them_all_or_none(
    api: httpx.AsyncClient,
) -> None:
    plan = {"concurrency": 3, "nodes": [{"id": f"n{i}"} for i in range(5)]}
    ex = (
        await api.post("/api/v1/executions", json={"plan": plan, "dispatch": "pull", "start": True})
    ).json()
    taken = (await api.post(f"/api/v1/executions/{ex['id']}/next", json={"limit": 5})).json()
    assert [n["node_id"] for n in taken["nodes"]] == ["n0", "n1", "n2"]  # the concurrency limit
    assert taken["node"]["node_id"] == "n0"
    refused = await api.post(
        f"/api/v1/executions/{ex['id']}/report",
        json={"completed": ["n0", "n3"]},  # n3 was never handed out
    )
    assert refused.status_code == 409
    unchanged = (await api.get(f"/api/v1/executions/{ex['id']}")).json()
    assert unchanged["counts"] == {"running": 3, "ready": 2}
    reported = await api.post(
        f"/api/v1/executions/{ex['id']}/report",
        json={"completed": ["n0", "n1"], "failed": [{"node": "n2", "error": "flaky"}]},
    )
    assert reported.status_code == 200, reported.text
    assert reported.json()["counts"] == {"completed": 2, "failed": 1, "cancelled": 2}
    assert reported.json()["status"] == "failed"
