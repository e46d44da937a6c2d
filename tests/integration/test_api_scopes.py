"""Every route of the API against every kind of key: what each role may do, the 403 that names
the missing scope, and the 404 a key of another workspace gets for this workspace's things.

``CALLS`` is the table: one row per route of the app, with the scope it must declare. A route
added without a row, or without a ``require(...)`` dependency, fails
``test_every_route_declares_the_scope_the_table_gives_it``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from starlette.routing import Route

from stitchwork.api.app import create_app
from stitchwork.api.deps import required_scope
from stitchwork.runtime.engine import Engine
from stitchwork.services.auth import ROLE_SCOPES, Role, Scope
from tests.conftest import Backend
from tests.integration.conftest import _client, workspace_key
from tests.integration.helpers import PROBLEM, fail, submit
from tests.integration.live import live_server, recv_json, ws_session

SUBMIT = "jobs:submit:<type>"
# Written out here rather than read from the code: this is what the roles are meant to be.
READER = {"jobs:read", "executions:read", "locks:read", "queues:read", "metrics:read"}
OPERATOR = READER | {"jobs:write", "executions:write", "locks:write", SUBMIT}
GRANTS = {"reader": READER, "operator": OPERATOR}  # an admin holds every scope

# Routes that take no key at all: probes, Prometheus, the API description.
UNAUTHENTICATED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
# The WebSocket authenticates in its first message; each room checks its scope on subscribe.
IN_BAND = {"/api/v1/ws"}

REPO = "shared-repo"
HOLD = "alice-edit"
FAR = {"Last-Event-ID": "1000000"}  # past the end of an ended stream: 204 at once


@dataclass
class World:
    """What workspace A has: a failed job (reads, cancel, retry), a completed one (its stream
    ends at once), a running pull-mode execution with node ``a``, an aborted execution and a
    hold on its repository ``shared-repo``."""

    job: str
    done_job: str
    execution: str
    done_execution: str

    def ids(self) -> list[str]:
        return [self.job, self.done_job, self.execution, self.done_execution, HOLD]


@dataclass(frozen=True)
class Call:
    method: str
    route: str  # the path template, as the app declares it
    scope: str
    path: Callable[[World], str]
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None
    # Names a resource of workspace A: a key of another workspace gets 404.
    resource: bool = True
    # The scope a denial names when it is not ``scope`` (submission: the type's own).
    denied_scope: str | None = None
    # For the other workspace's key, when the call differs from A's own (never an id of A's
    # it could not know, such as a job to follow that does not exist).
    params_for_other: Callable[[World], dict[str, str]] | None = None


def _ex(suffix: str = "") -> Callable[[World], str]:
    return lambda w: f"/api/v1/executions/{w.execution}{suffix}"


def _job(suffix: str = "") -> Callable[[World], str]:
    return lambda w: f"/api/v1/jobs/{w.job}{suffix}"


NOWHERE = str(uuid.UUID(int=7))
PLAN = {"nodes": [{"id": "x"}]}

# In the order they are sent: reads before the writes that change what they read.
CALLS = [
    Call(
        "POST",
        "/api/v1/jobs",
        SUBMIT,
        lambda w: "/api/v1/jobs",
        body={"type": "noop"},
        resource=False,
        denied_scope="jobs:submit:noop",
    ),
    Call("GET", "/api/v1/jobs", "jobs:read", lambda w: "/api/v1/jobs", resource=False),
    Call("GET", "/api/v1/jobs/{job_id}", "jobs:read", _job()),
    Call("GET", "/api/v1/jobs/{job_id}/steps", "jobs:read", _job("/steps")),
    Call("GET", "/api/v1/jobs/{job_id}/steps/{step_id}", "jobs:read", _job(f"/steps/{NOWHERE}")),
    Call("GET", "/api/v1/jobs/{job_id}/events", "jobs:read", _job("/events")),
    Call(
        "GET",
        "/api/v1/jobs/{job_id}/events/stream",
        "jobs:read",
        lambda w: f"/api/v1/jobs/{w.done_job}/events/stream",
        headers=FAR,
    ),
    Call(
        "GET",
        "/api/v1/events/stream",
        "jobs:read",
        lambda w: "/api/v1/events/stream",
        # A job that does not exist ends the request with 404 once the key passed; another
        # workspace's key asks for A's job, which it may not follow either.
        params={"job_id": NOWHERE},
        params_for_other=lambda w: {"job_id": w.job},
    ),
    Call("POST", "/api/v1/jobs/{job_id}/cancel", "jobs:write", _job("/cancel")),
    Call("POST", "/api/v1/jobs/{job_id}/retry", "jobs:write", _job("/retry")),
    Call("GET", "/api/v1/queues", "queues:read", lambda w: "/api/v1/queues", resource=False),
    Call(
        "POST",
        "/api/v1/queues/{name}/pause",
        "queues:write",
        lambda w: "/api/v1/queues/default/pause",
        resource=False,
    ),
    Call(
        "POST",
        "/api/v1/queues/{name}/resume",
        "queues:write",
        lambda w: "/api/v1/queues/default/resume",
        resource=False,
    ),
    Call(
        "POST",
        "/api/v1/executions",
        "executions:write",
        lambda w: "/api/v1/executions",
        body={"plan": PLAN},
        resource=False,
    ),
    Call(
        "POST",
        "/api/v1/executions/import",
        "executions:write",
        lambda w: "/api/v1/executions/import",
        content=json.dumps(PLAN),
        params={"format": "json"},
        resource=False,
    ),
    Call(
        "GET",
        "/api/v1/executions",
        "executions:read",
        lambda w: "/api/v1/executions",
        resource=False,
    ),
    Call("GET", "/api/v1/executions/{execution_id}", "executions:read", _ex()),
    Call("GET", "/api/v1/executions/{execution_id}/waves", "executions:read", _ex("/waves")),
    Call("GET", "/api/v1/executions/{execution_id}/events", "executions:read", _ex("/events")),
    Call("GET", "/api/v1/executions/{execution_id}/debug", "executions:read", _ex("/debug")),
    Call("GET", "/api/v1/executions/{execution_id}/metrics", "executions:read", _ex("/metrics")),
    Call(
        "GET",
        "/api/v1/executions/{execution_id}/stream",
        "executions:read",
        lambda w: f"/api/v1/executions/{w.done_execution}/stream",
        headers=FAR,
    ),
    Call(
        "POST",
        "/api/v1/executions/{execution_id}/report",
        "executions:write",
        _ex("/report"),
        body={"completed": ["a"]},
    ),
    Call(
        "POST",
        "/api/v1/executions/{execution_id}/nodes/{node_id}/complete",
        "executions:write",
        _ex("/nodes/a/complete"),
    ),
    Call(
        "POST",
        "/api/v1/executions/{execution_id}/nodes/{node_id}/fail",
        "executions:write",
        _ex("/nodes/a/fail"),
    ),
    Call("POST", "/api/v1/executions/{execution_id}/next", "executions:write", _ex("/next")),
    Call("POST", "/api/v1/executions/{execution_id}/{action}", "executions:write", _ex("/pause")),
    Call(
        "GET",
        "/api/v1/locks",
        "locks:read",
        lambda w: "/api/v1/locks",
        params={"repo": REPO},
        resource=False,
    ),
    Call(
        "POST",
        "/api/v1/locks",
        "locks:write",
        lambda w: "/api/v1/locks",
        body={"name": "bob-edit", "claims": ["docs/"], "repo": REPO},
        resource=False,
    ),
    Call(
        "DELETE",
        "/api/v1/locks/{name}",
        "locks:write",
        lambda w: f"/api/v1/locks/{HOLD}",
        params={"repo": REPO},
    ),
    Call("GET", "/api/v1/metrics", "metrics:read", lambda w: "/api/v1/metrics", resource=False),
]


def _allowed(role: str, scope: str) -> bool:
    return role == "admin" or scope in GRANTS[role]


async def _world(engine: Engine, api: httpx.AsyncClient) -> World:
    job = await submit(api)
    await fail(engine, job["id"])
    done = await submit(api)
    await fail(engine, done["id"])
    running = await api.post(
        "/api/v1/executions",
        json={"plan": {"nodes": [{"id": "a"}]}, "dispatch": "pull", "start": True, "repo": REPO},
    )
    aborted = await api.post("/api/v1/executions", json={"plan": PLAN, "dispatch": "pull"})
    assert (await api.post(f"/api/v1/executions/{aborted.json()['id']}/abort")).status_code == 200
    hold = {"name": HOLD, "claims": ["src/"], "repo": REPO}
    assert (await api.post("/api/v1/locks", json=hold)).status_code == 201
    return World(job["id"], done["id"], running.json()["id"], aborted.json()["id"])


async def _send(client: httpx.AsyncClient, call: Call, world: World, *, other: bool) -> Any:
    params = call.params_for_other(world) if other and call.params_for_other else call.params
    return await client.request(
        call.method,
        call.path(world),
        json=call.body,
        params=params,
        headers=call.headers,
        content=call.content,
    )


def _declared(app: FastAPI) -> tuple[dict[tuple[str, str], str | None], set[str]]:
    """Every HTTP route of the app (included routers flattened) with the scope it declares,
    and the paths of its WebSocket routes."""
    declared: dict[tuple[str, str], str | None] = {}
    sockets: set[str] = set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIWebSocketRoute):
            sockets.add(str(context.path))
        elif isinstance(context.original_route, Route):
            for method in sorted(context.methods or ()):
                if method != "HEAD":
                    declared[(method, str(context.path))] = required_scope(context)
    return declared, sockets


# -- the table matches the app ----------------------------------------------------------------


async def test_every_route_declares_the_scope_the_table_gives_it(engine: Engine) -> None:
    declared, sockets = _declared(create_app(engine))
    table = {(c.method, c.route): c.scope for c in CALLS}

    assert len(table) == len(CALLS), "a route is in the table twice"
    missing = set(declared) - set(table) - UNAUTHENTICATED
    assert not missing, f"routes without a row in CALLS (declare and list their scope): {missing}"
    assert not set(table) - set(declared), "rows in CALLS for routes the app does not have"
    for key, scope in table.items():
        assert declared[key] == scope, f"{key} declares {declared[key]!r}, expected {scope!r}"
    for key in UNAUTHENTICATED & set(declared):
        assert declared[key] is None, f"{key} is a public route but declares a scope"
    assert sockets == IN_BAND


async def test_the_openapi_schema_names_each_operations_scope(engine: Engine) -> None:
    table = {(c.method, c.route): c.scope for c in CALLS}
    paths = create_app(engine).openapi()["paths"]

    seen = set()
    for path, operations in paths.items():
        for method, operation in operations.items():
            key = (method.upper(), path)
            seen.add(key)
            if key in UNAUTHENTICATED:
                assert "x-required-scope" not in operation
            else:
                assert operation.get("x-required-scope") == table[key], key
    assert set(table) <= seen


# -- every role against every route -----------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "operator", "reader"])
async def test_each_role_reaches_exactly_the_routes_its_scopes_allow(
    engine: Engine, api: httpx.AsyncClient, role: str
) -> None:
    world = await _world(engine, api)
    async with _client(engine, await workspace_key(engine, "default", role, role)) as client:
        for call in CALLS:
            response = await _send(client, call, world, other=False)
            where = f"{role}: {call.method} {call.route} -> {response.status_code} {response.text}"
            if _allowed(role, call.scope):
                # Let through: whatever the resource's state says, never a refusal of the key,
                # and this workspace's own things are found.
                assert response.status_code < 500, where
                assert response.status_code not in (401, 403), where
                if call.resource and "/steps/" not in call.route and "stream" not in call.route:
                    assert response.status_code != 404, where
            else:
                assert response.status_code == 403, where
                assert response.headers["content-type"].startswith(PROBLEM), where
                scope = call.denied_scope or call.scope
                assert response.json()["required_scope"] == scope, where
                assert scope in response.json()["detail"], where


async def test_another_workspaces_key_finds_none_of_this_workspaces_things(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    world = await _world(engine, api)
    other_key = await workspace_key(engine, "other", "tenant-b", "operator")
    async with _client(engine, other_key) as other:
        for call in CALLS:
            response = await _send(other, call, world, other=True)
            where = f"other: {call.method} {call.route} -> {response.status_code} {response.text}"
            if not _allowed("operator", call.scope):
                assert response.status_code == 403, where
                assert response.json()["required_scope"] == call.scope, where
            elif call.resource:
                assert response.status_code == 404, where
            else:
                assert response.status_code in (200, 201), where
                leaked = [i for i in world.ids() if i in response.text]
                assert not leaked, f"{where}: shows {leaked}"
    # Nothing of A's changed: its hold is still there, its job still failed.
    listed = (await api.get("/api/v1/locks", params={"repo": REPO})).json()["items"]
    assert [lock["owner"] for lock in listed] == [f"hold:{HOLD}"]
    assert (await api.get(f"/api/v1/jobs/{world.job}")).json()["status"] == "failed"


# -- job types ----------------------------------------------------------------------------------


async def test_an_operator_needs_the_shell_scope_to_submit_or_plan_shell_jobs(
    engine: Engine,
) -> None:
    shell = {"type": "shell", "payload": {"command": ["true"]}}
    plan = {"plan": {"nodes": [{"id": "s", "type": "shell", "payload": {"command": ["true"]}}]}}
    operator = await workspace_key(engine, "default", "op", "operator")
    trusted = await workspace_key(engine, "default", "deploy", "operator", ["jobs:submit:shell"])
    async with _client(engine, operator) as op, _client(engine, trusted) as deploy:
        for refused in (
            await op.post("/api/v1/jobs", json=shell),
            await op.post("/api/v1/executions", json=plan),
        ):
            assert refused.status_code == 403, refused.text
            assert refused.json()["required_scope"] == "jobs:submit:shell"
            assert "jobs:submit:shell" in refused.json()["detail"]
        # Every other type is the operator's without asking; pull-mode nodes run elsewhere.
        assert (await op.post("/api/v1/jobs", json={"type": "sleep"})).status_code == 201
        pull = await op.post("/api/v1/executions", json={**plan, "dispatch": "pull"})
        assert pull.status_code == 201, pull.text

        assert (await deploy.post("/api/v1/jobs", json=shell)).status_code == 201
        assert (await deploy.post("/api/v1/executions", json=plan)).status_code == 201
        assert (await op.get("/api/v1/jobs")).json()["items"][0]["type"] == "shell"


async def test_retrying_a_job_needs_the_scope_that_submits_its_type(engine: Engine) -> None:
    admin = await workspace_key(engine, "default", "root", "admin")
    operator = await workspace_key(engine, "default", "op", "operator")
    async with _client(engine, admin) as root, _client(engine, operator) as op:
        job = (
            await root.post(
                "/api/v1/jobs", json={"type": "shell", "payload": {"command": ["false"]}}
            )
        ).json()
        assert (await op.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 200

        refused = await op.post(f"/api/v1/jobs/{job['id']}/retry")

        assert refused.status_code == 403
        assert refused.json()["required_scope"] == "jobs:submit:shell"
        assert (await root.get(f"/api/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
        assert (await root.post(f"/api/v1/jobs/{job['id']}/retry")).status_code == 200


# -- shared checkouts ---------------------------------------------------------------------------


async def test_holds_on_an_absolute_path_need_locks_global(engine: Engine, tmp_path: Any) -> None:
    checkout = str(tmp_path)
    hold = {"name": "edit", "claims": ["src/"], "repo": checkout}
    operator = await workspace_key(engine, "default", "op", "operator")
    admin = await workspace_key(engine, "default", "root", "admin")
    async with _client(engine, operator) as op, _client(engine, admin) as root:
        refused = await op.post("/api/v1/locks", json=hold)
        assert refused.status_code == 403
        assert refused.json()["required_scope"] == "locks:global"
        # On its workspace's named repositories the operator holds what it likes.
        named = await op.post("/api/v1/locks", json={**hold, "repo": "shop"})
        assert named.status_code == 201

        assert (await root.post("/api/v1/locks", json=hold)).status_code == 201
        release = await op.delete("/api/v1/locks/edit", params={"repo": checkout})
        assert release.status_code == 403
        listed = (await op.get("/api/v1/locks", params={"repo": checkout})).json()["items"]
        assert [lock["owner"] for lock in listed] == ["hold:edit"]


# -- the WebSocket --------------------------------------------------------------------------------


async def test_a_websocket_room_needs_its_read_scope(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every role reads today, so a key that may not is made by narrowing the reader's role.
    monkeypatch.setitem(ROLE_SCOPES, Role.READER, frozenset({Scope.EXECUTIONS_READ}))
    async with live_server(sqlite_backend, with_worker=False) as server:
        job = await server.submit("noop")
        async with server.client() as api:
            ex = (await api.post("/api/v1/executions", json={"plan": PLAN})).json()
        reader = await workspace_key(server.engine, "default", "narrow", "reader")
        async with ws_session(server, reader) as ws:
            await ws.send(json.dumps({"action": "subscribe", "room": f"job:{job['id']}"}))
            refused = await recv_json(ws)
            assert refused["event"] == "error"
            assert refused["required_scope"] == "jobs:read"
            await ws.send(json.dumps({"action": "subscribe", "room": f"execution:{ex['id']}"}))
            assert (await recv_json(ws))["event"] == "subscribed"


def test_the_role_table_is_what_the_code_grants() -> None:
    assert {s.replace("*", "<type>") for s in ROLE_SCOPES[Role.READER]} == READER
    assert {s.replace("*", "<type>") for s in ROLE_SCOPES[Role.OPERATOR]} == OPERATOR
