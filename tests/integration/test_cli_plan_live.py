"""``stitchwork plan`` against a real server: run, watch, pause, resume, abort, list and show
drive uvicorn + worker + scheduler in the test's event loop (see ``live.py``) with the CLI in a
thread, reading the real SSE stream."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from stitchwork.cli import plan_view
from stitchwork.cli.follow import follow
from tests.conftest import Backend
from tests.integration.cli_plan_helpers import (
    CHAIN,
    UUID_RE,
    Cli,
    cells,
    flat,
    write,
)
from tests.integration.live import LiveServer, live_server, wait_until


@pytest.fixture
async def server(sqlite_backend: Backend) -> AsyncIterator[LiveServer]:
    # The server logs into this process's stdout, which the CLI's runner captures meanwhile.
    with capture_logs():
        async with live_server(sqlite_backend) as live:
            yield live


@pytest.fixture
def live_cli(server: LiveServer, tmp_path: Path) -> Cli:
    env = {"STITCHWORK_API_URL": server.url, "STITCHWORK_API_KEY": server.key}
    return Cli({"STITCHWORK_DATA_DIR": str(tmp_path / "data"), **env})


async def execution(server: LiveServer, ex_id: str) -> dict[str, Any]:
    async with server.client() as api:
        response = await api.get(f"/api/v1/executions/{ex_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for(server: LiveServer, ex_id: str, check: Callable[[dict[str, Any]], bool]) -> None:
    """Poll the execution until ``check(execution)`` holds."""
    async with asyncio.timeout(20):
        while True:  # polled: the test has no event to wait on
            if check(await execution(server, ex_id)):
                return
            await asyncio.sleep(0.05)


def node_is(node: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ex: any(n["id"] == node and n["status"] == status for n in ex["nodes"])


def started_id(output: str) -> str:
    match = re.search(rf"execution ({UUID_RE}) (running|planned)", output)
    assert match, output
    return match.group(1)


def node_rows(output: str, ids: list[str]) -> dict[str, list[str]]:
    """The final table's row of each node (the last row that starts with its id)."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        row = cells(line)
        if len(row) >= 5 and row[0] in ids:
            rows[row[0]] = row
    return rows


async def test_plan_run_follows_three_nodes_to_completion_and_exits_0(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    result = await live_cli.run("plan", "run", str(write(tmp_path, "plan.yaml", CHAIN)))

    assert result.exit_code == 0, result.output
    ex_id = started_id(result.output)
    assert f"execution {ex_id} running: 3 nodes, dispatch jobs, repo default" in flat(result.output)
    rows = node_rows(result.output, ["fetch", "build", "ship"])
    assert {node: row[2] for node, row in rows.items()} == dict.fromkeys(
        ("fetch", "build", "ship"), "completed"
    )
    jobs = {node["id"]: node["job_id"] for node in (await execution(server, ex_id))["nodes"]}
    assert {node: row[3] for node, row in rows.items()} == {n: j[-8:] for n, j in jobs.items()}
    assert f"execution {ex_id} completed: 3 completed" in result.output
    # One line per event (not a terminal), in the order the nodes ran.
    events = [line.split()[1:3] for line in result.output.splitlines() if " task." in line]
    assert events.index(["task.completed", "fetch"]) < events.index(["task.started", "build"])
    assert events.index(["task.completed", "build"]) < events.index(["task.started", "ship"])
    assert (await execution(server, ex_id))["status"] == "completed"
    assert f"task.started         fetch  job {jobs['fetch']}" in result.output


async def test_plan_run_of_a_failing_node_exits_1_and_shows_the_failure(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    plan = {
        "nodes": [
            {"id": "check", "type": "shell", "payload": {"command": "exit 3"}},
            {"id": "deploy", "type": "noop", "depends_on": ["check"]},
        ]
    }

    result = await live_cli.run("plan", "run", str(write(tmp_path, "p.json", plan)))

    assert result.exit_code == 1, result.output
    ex_id = started_id(result.output)
    rows = node_rows(result.output, ["check", "deploy"])
    assert rows["check"][2] == "failed"
    assert rows["deploy"][2] in {"cancelled", "skipped"}
    assert f"execution {ex_id} failed: 1 failed" in flat(result.output)


async def test_plan_run_that_the_server_rejects_exits_1_with_its_reason(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    plan = {"nodes": [{"id": "a", "type": "no-such-type"}]}

    result = await live_cli.run("plan", "run", str(write(tmp_path, "p.json", plan)))

    assert result.exit_code == 1
    assert "error: 422" in flat(result.output)
    assert "node 'a'" in flat(result.output)


async def start_long(server: LiveServer, live_cli: Cli, tmp_path: Path) -> str:
    """``plan run --no-watch`` of a 30 s sleep node and its dependent; returns once the
    sleep node runs."""
    plan = {
        "name": "long",
        "nodes": [
            {"id": "slow", "type": "sleep", "payload": {"seconds": 30}},
            {"id": "after", "type": "noop", "depends_on": ["slow"]},
        ],
    }
    path = write(tmp_path, "long.json", plan)
    started = await live_cli.run("plan", "run", str(path), "--no-watch", "--repo", "r1")
    assert started.exit_code == 0, started.output
    ex_id = started_id(started.output)
    assert f"follow it with `stitchwork plan watch {ex_id}`" in flat(started.output)
    await wait_for(server, ex_id, node_is("slow", "running"))
    return ex_id


async def test_pause_resume_and_abort_print_the_new_status(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    ex_id = await start_long(server, live_cli, tmp_path)

    paused = await live_cli.run("plan", "pause", ex_id)
    resumed = await live_cli.run("plan", "resume", ex_id)
    paused_again = await live_cli.run("plan", "pause", ex_id)
    shown = await live_cli.run("plan", "show", ex_id)
    listed = await live_cli.run("plan", "list")
    aborted = await live_cli.run("plan", "abort", ex_id)
    again = await live_cli.run("plan", "resume", ex_id)

    assert f"execution {ex_id} is paused" in paused.output
    assert f"execution {ex_id} is running" in resumed.output
    assert f"execution {ex_id} is paused" in paused_again.output
    assert re.search(r"status\s+paused", shown.output), shown.output
    rows = node_rows(shown.output, ["slow", "after"])
    assert rows["slow"][2] == "running"
    assert rows["after"][6] == "slow"  # depends on
    row = next(cells(line) for line in listed.output.splitlines() if ex_id in line)
    assert row[:3] == [ex_id, "long", "paused"]
    assert row[4:6] == ["jobs", "r1"]
    assert aborted.exit_code == 0, aborted.output
    assert f"execution {ex_id} is aborted" in aborted.output
    nodes = {n["id"]: n["status"] for n in (await execution(server, ex_id))["nodes"]}
    assert nodes == {"slow": "cancelled", "after": "cancelled"}
    assert again.exit_code == 1
    assert "error: 409" in flat(again.output)
    assert "already ended (aborted)" in flat(again.output)


async def test_watch_of_an_execution_aborted_while_running_exits_1_all_cancelled(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    ex_id = await start_long(server, live_cli, tmp_path)
    bus = server.engine.bus
    before = bus.subscriber_count
    watching = asyncio.create_task(live_cli.run("plan", "watch", ex_id))
    # Aborted once the watch follows the live stream (not before: it would only replay it).
    await wait_until(lambda: bus.subscriber_count > before, timeout_s=20, what="the watch")

    aborted = await live_cli.run("plan", "abort", ex_id)
    watched = await asyncio.wait_for(watching, 20)

    assert f"execution {ex_id} is aborted" in aborted.output
    assert watched.exit_code == 1, watched.output
    rows = node_rows(watched.output, ["slow", "after"])
    assert [rows["slow"][2], rows["after"][2]] == ["cancelled", "cancelled"]
    assert "execution.aborted" in watched.output
    assert f"execution {ex_id} aborted: 2 cancelled" in watched.output


async def test_controlling_an_unknown_execution_exits_1_with_the_404(live_cli: Cli) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"

    for action in ("pause", "resume", "abort", "show", "watch"):
        result = await live_cli.run("plan", action, unknown)

        assert result.exit_code == 1, (action, result.output)
        assert f"error: 404: execution {unknown} not found" in flat(result.output), action


async def test_watch_of_a_finished_execution_prints_its_history_and_exits_0(
    server: LiveServer, live_cli: Cli, tmp_path: Path
) -> None:
    done = await live_cli.run("plan", "run", "--no-watch", str(write(tmp_path, "p.yaml", CHAIN)))
    ex_id = started_id(done.output)
    await wait_for(server, ex_id, lambda ex: ex["status"] == "completed")

    watched = await live_cli.run("plan", "watch", ex_id)

    assert watched.exit_code == 0, watched.output
    assert "execution.completed" in watched.output
    assert f"execution {ex_id} completed: 3 completed" in watched.output


async def test_watch_resuming_after_the_last_event_of_an_ended_execution_exits_cleanly(
    server: LiveServer, live_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = await live_cli.run("plan", "run", "--no-watch", str(write(tmp_path, "p.yaml", CHAIN)))
    ex_id = started_id(done.output)
    await wait_for(server, ex_id, lambda ex: ex["status"] == "completed")
    last_seq = (await execution(server, ex_id))["last_event_seq"]
    # As after a dropped connection: the server answers a resume past the end with 204.
    monkeypatch.setattr(plan_view, "follow", functools.partial(follow, last_id=str(last_seq)))

    watched = await live_cli.run("plan", "watch", ex_id)

    assert watched.exit_code == 0, watched.output
    assert " task." not in watched.output  # nothing replayed
    assert "reconnecting" not in watched.output
    assert f"execution {ex_id} completed: 3 completed" in watched.output
