"""Two workspaces on one server: queues, holds, named repositories, metrics and health never
let one workspace see, change or block the other's things (a shared checkout excepted: its
files are the same, so its exclusion is global, but without the other workspace's ids)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from stitchwork.runtime.engine import Engine
from tests.integration.conftest import _client, workspace_key
from tests.integration.helpers import assert_problem, submit

LOCKS = "/api/v1/locks"
REPO = "shared-repo"


@pytest.fixture
async def bob(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """An operator of workspace 'team-b' (the API fixture ``api`` is an admin of 'default')."""
    async with _client(engine, await workspace_key(engine, "team-b", "bob", "operator")) as c:
        yield c


@pytest.mark.parametrize("role", ["operator", "reader"])
async def test_only_an_admin_pauses_a_queue_every_workspace_shares(
    engine: Engine, api: httpx.AsyncClient, role: str
) -> None:
    async with _client(engine, await workspace_key(engine, "team-b", "b", role)) as other:
        refused = await other.post("/api/v1/queues/default/pause")

        body = assert_problem(refused, 403, "queues:write")
        assert body["required_scope"] == "queues:write"
        assert [q.paused for q in await engine.queue.list_queues()] == [False]
        assert (await other.get("/api/v1/queues")).status_code == 200

    assert (await api.post("/api/v1/queues/default/pause")).json()["paused"] is True


async def test_queue_depth_is_each_workspaces_own(
    api: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    await submit(api)
    await submit(api)
    await submit(bob)

    assert (await api.get("/api/v1/queues")).json() == [
        {"name": "default", "paused": False, "queued": 2, "running": 0}
    ]
    assert (await bob.get("/api/v1/queues")).json() == [
        {"name": "default", "paused": False, "queued": 1, "running": 0}
    ]


async def test_another_workspace_cannot_list_create_or_delete_this_workspaces_holds(
    api: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    hold = {"name": "alice-edit", "claims": ["src/"], "repo": REPO}
    assert (await api.post(LOCKS, json=hold)).status_code == 201

    listed = await bob.get(LOCKS, params={"repo": REPO})
    deleted = await bob.delete(f"{LOCKS}/alice-edit", params={"repo": REPO})
    # The same hold made by bob lands in bob's own repository, so it conflicts with nothing.
    created = await bob.post(LOCKS, json=hold)

    assert listed.json() == {"repo": REPO, "items": []}
    assert_problem(deleted, 404, "no hold named 'alice-edit'")
    assert created.status_code == 201
    mine = (await api.get(LOCKS, params={"repo": REPO})).json()["items"]
    assert [(lock["owner"], lock["claim"]) for lock in mine] == [("hold:alice-edit", "src/")]
    theirs = (await bob.get(LOCKS, params={"repo": REPO})).json()["items"]
    assert [(lock["owner"], lock["claim"]) for lock in theirs] == [("hold:alice-edit", "src/")]
    assert (await bob.delete(f"{LOCKS}/alice-edit", params={"repo": REPO})).status_code == 204
    assert len((await api.get(LOCKS, params={"repo": REPO})).json()["items"]) == 1


@pytest.mark.parametrize("dispatch", ["jobs", "pull"])
async def test_a_hold_on_another_workspaces_same_named_repo_does_not_block_this_one(
    api: httpx.AsyncClient, bob: httpx.AsyncClient, dispatch: str
) -> None:
    squat = {"name": "squat", "claims": ["."], "repo": REPO}
    assert (await bob.post(LOCKS, json=squat)).status_code == 201
    plan = {"nodes": [{"id": "edit", "claims": ["src/app.py"]}]}

    created = await api.post(
        "/api/v1/executions",
        json={"plan": plan, "repo": REPO, "dispatch": dispatch, "start": True},
    )
    assert created.status_code == 201, created.text
    ex = created.json()
    if dispatch == "pull":
        taken = (await api.post(f"/api/v1/executions/{ex['id']}/next")).json()
        assert taken["node"]["node_id"] == "edit"
    else:
        assert {n["id"]: n["status"] for n in ex["nodes"]} == {"edit": "running"}
    events = (await api.get(f"/api/v1/executions/{ex['id']}/events")).json()["items"]
    assert "lock.contended" not in [e["type"] for e in events]
    # Within bob's workspace the squat holds: its own execution on the name waits.
    blocked = await bob.post(
        "/api/v1/executions",
        json={"plan": plan, "repo": REPO, "dispatch": "pull", "start": True},
    )
    assert (await bob.post(f"/api/v1/executions/{blocked.json()['id']}/next")).json() == {
        "node": None,
        "nodes": [],
    }


async def test_a_shared_checkout_excludes_across_workspaces_without_showing_their_ids(
    api: httpx.AsyncClient, bob: httpx.AsyncClient, tmp_path: Path
) -> None:
    checkout = str(tmp_path)
    plan = {"nodes": [{"id": "edit", "claims": ["src/"]}]}
    body = {"plan": plan, "repo": checkout, "dispatch": "pull", "start": True}
    mine = (await api.post("/api/v1/executions", json=body)).json()
    assert (await api.post(f"/api/v1/executions/{mine['id']}/next")).json()["node"]

    theirs = (await bob.post("/api/v1/executions", json=body)).json()
    waiting = (await bob.post(f"/api/v1/executions/{theirs['id']}/next")).json()
    seen = (await bob.get(LOCKS, params={"repo": checkout})).json()["items"]
    debug = (await bob.get(f"/api/v1/executions/{theirs['id']}/debug")).json()

    assert waiting["node"] is None  # the files are the same: one writer at a time
    assert [(lock["owner"], lock["execution_id"], lock["node"]) for lock in seen] == [
        ("another workspace", None, None)
    ]
    assert debug["wait_for"] == {"edit": ["another workspace"]}
    assert mine["id"] not in str(seen) + str(debug["locks"])
    own = (await api.get(LOCKS, params={"repo": checkout})).json()["items"]
    assert [lock["owner"] for lock in own] == [f"{mine['id']}/edit"]


async def test_json_metrics_count_only_the_callers_workspace(
    engine: Engine, api: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    await submit(api)
    await submit(api)
    await submit(bob)
    assert (await bob.post(LOCKS, json={"name": "h", "claims": ["a/"], "repo": REPO})).is_success

    mine = (await api.get("/api/v1/metrics")).json()
    theirs = (await bob.get("/api/v1/metrics")).json()
    everything = (await api.get("/api/v1/metrics", params={"all": "true"})).json()
    refused = await bob.get("/api/v1/metrics", params={"all": "true"})

    assert (mine["scope"], mine["jobs_by_status"], mine["queue_depth"]) == (
        "workspace",
        {"queued": 2},
        {"default": 2},
    )
    assert mine["locks"]["held"] == 0
    assert (theirs["jobs_by_status"], theirs["locks"]["held"]) == ({"queued": 1}, 1)
    assert (everything["scope"], everything["jobs_by_status"]) == ("database", {"queued": 3})
    assert assert_problem(refused, 403, "metrics:all")["required_scope"] == "metrics:all"


async def test_health_and_prometheus_show_no_ids(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    job = await submit(api)
    ex = (
        await api.post("/api/v1/executions", json={"plan": {"nodes": [{"id": "a"}]}, "start": True})
    ).json()

    health = await anonymous.get("/api/v1/health")
    prometheus = await anonymous.get("/metrics")

    assert health.status_code == prometheus.status_code == 200
    assert health.json()["executions"]["running"] == 1
    assert isinstance(health.json()["stalled"], int)
    for text in (health.text, prometheus.text):
        assert job["id"] not in text
        assert ex["id"] not in text
        assert ex["workspace_id"] not in text
