"""An execution survives a restart of the real ``stitchwork serve`` process: it resumes where
it stopped, dependents still become ready, and no node runs twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import eventually
from tests.e2e.test_stream_restart import _ready, _stop
from tests.sse import free_port

pytestmark = pytest.mark.slow

Spawn = Callable[..., Popen[bytes]]

PLAN = {
    "concurrency": 2,
    "nodes": [
        {"id": "a", "type": "sleep", "payload": {"seconds": 0.5}, "claims": ["src/"]},
        {"id": "b", "type": "sleep", "payload": {"seconds": 0.5}, "claims": ["docs/"]},
        {"id": "c", "type": "sleep", "payload": {"seconds": 0.3}, "depends_on": ["a"]},
        {"id": "d", "type": "sleep", "payload": {"seconds": 0.3}, "depends_on": ["a", "b"]},
        {"id": "e", "type": "noop", "depends_on": ["c", "d"], "claims": ["src/"]},
    ],
}


async def test_an_execution_resumes_after_a_restart_without_running_a_node_twice(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    first = spawn("serve", "--port", str(port))
    key = await _ready(url, first, data_dir)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as api:
        created = await api.post("/api/v1/executions", json={"plan": PLAN, "start": True})
        assert created.status_code == 201, created.text
        ex_id = created.json()["id"]

        async def some_running() -> bool:
            nodes = (await api.get(f"/api/v1/executions/{ex_id}")).json()["nodes"]
            return any(n["status"] == "running" for n in nodes)

        await eventually(some_running, timeout_s=20, what="a running node")
        assert await _stop(first) == 0  # graceful: running jobs finish, nothing is re-queued

        second = spawn("serve", "--port", str(port))
        assert await _ready(url, second, data_dir) == key

        async def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = (await api.get(f"/api/v1/executions/{ex_id}")).json()
            return body if body["status"] in {"completed", "failed"} else None

        midway = (await api.get(f"/api/v1/executions/{ex_id}")).json()
        assert midway["status"] == "running"  # the first process stopped it midway
        final = await eventually(finished, timeout_s=30, what="the execution to finish")
        assert final["status"] == "completed"
        events = (await api.get(f"/api/v1/executions/{ex_id}/events")).json()["items"]
        started = Counter(e["payload"]["node"] for e in events if e["type"] == "task.started")
        assert started == dict.fromkeys("abcde", 1)  # no node ran twice
        assert [e["type"] for e in events].count("execution.completed") == 1
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        for node in final["nodes"]:
            job = (await api.get(f"/api/v1/jobs/{node['job_id']}")).json()
            assert job["attempt"] == 1
            assert job["status"] == "completed"
        jobs = (await api.get("/api/v1/jobs?limit=200")).json()["items"]
        assert len(jobs) == 5  # one job per node, none started again
        await _stop(second)
