"""``stitchwork plan`` without a server: validate and waves run locally (CliRunner), and the
live view is rendered from events."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from stitchwork.cli.follow import StreamEvent
from stitchwork.cli.plan_view import ExecutionView
from stitchwork.domain.dag import critical_path
from stitchwork.domain.plans import parse_plan
from stitchwork.services.executions import plan_waves
from tests.integration.cli_plan_helpers import (
    CHAIN,
    CYCLE,
    FIXTURE,
    Cli,
    cells,
    flat,
    free_port,
    write,
)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    # An address nothing listens on: a command that reached for the API would exit 1.
    return Cli(
        {
            "STITCHWORK_DATA_DIR": str(tmp_path / "data"),
            "STITCHWORK_API_URL": f"http://127.0.0.1:{free_port()}",
            "STITCHWORK_API_KEY": "sw_0123456789ab_unused",
        }
    )


def test_validate_summarises_the_18_issue_milestone_table(cli: Cli) -> None:
    plan = parse_plan(FIXTURE.read_text())

    output = cli.ok("plan", "validate", str(FIXTURE))

    lines = [" ".join(line.split()) for line in output.splitlines()]
    assert f"plan {FIXTURE} is valid (markdown)" in lines
    assert "name Milestone 3: Storefront MVP" in lines
    assert "nodes 18" in lines
    assert f"edges {len(plan.edges)}" in lines
    assert "concurrency 4" in lines
    assert "failure policy fail_fast" in lines
    assert "roots 201, 216" in lines
    path = critical_path(plan)
    assert len(path) == 7
    assert f"critical path 7 nodes: {' → '.join(path)}" in lines


@pytest.mark.parametrize(
    ("name", "content", "option"),
    [
        ("plan.yaml", CHAIN, []),
        ("plan.json", json.dumps(yaml.safe_load(CHAIN)), []),
        ("plan.txt", CHAIN, ["--format", "yaml"]),
    ],
)
def test_validate_reads_the_format_from_the_suffix_or_the_option(
    cli: Cli, tmp_path: Path, name: str, content: str, option: list[str]
) -> None:
    output = flat(cli.ok("plan", "validate", str(write(tmp_path, name, content)), *option))

    assert "name three steps" in output
    assert "nodes 3 edges 3 concurrency 2" in output
    assert "critical path 3 nodes: fetch → build → ship" in output


def test_validate_reads_a_plan_from_stdin(cli: Cli) -> None:
    result = cli("plan", "validate", "-", input=CHAIN)

    assert result.exit_code == 0, result.output
    assert "plan <stdin> is valid (format detected)" in flat(result.output)
    assert "roots fetch" in flat(result.output)


def test_validate_of_a_cyclic_plan_exits_2_naming_the_cycle(cli: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "cycle.json", CYCLE)

    result = cli("plan", "validate", str(path))

    assert result.exit_code == 2
    assert f"error: invalid plan {path}: dependency cycle build -> test -> build" in flat(
        result.output
    )


@pytest.mark.parametrize(
    ("plan", "phrases"),
    [
        (
            {"nodes": [{"id": "a", "claims": ["../secrets"]}]},
            ["(at nodes[0].claims[0])", "invalid claim '../secrets'"],
        ),
        (
            {"nodes": [{"id": "a"}, {"id": "a"}]},
            ["(at nodes[1].id)", "node id 'a' is used twice"],
        ),
        (
            {"nodes": [{"id": "a", "depends_on": ["ghost"]}]},
            ["(at nodes[0].depends_on[0])", "'ghost' is not in the plan"],
        ),
        ({"concurrency": 0, "nodes": [{"id": "a"}]}, ["(at concurrency)", "from 1 to"]),
    ],
)
def test_validate_of_an_invalid_plan_exits_2_naming_the_field(
    cli: Cli, tmp_path: Path, plan: dict[str, Any], phrases: list[str]
) -> None:
    result = cli("plan", "validate", str(write(tmp_path, "bad.json", plan)))

    assert result.exit_code == 2
    for phrase in phrases:
        assert phrase in flat(result.output)


def test_validate_of_a_missing_file_exits_2_saying_so(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.md"

    result = cli("plan", "validate", str(missing))

    assert result.exit_code == 2
    assert f"error: plan file {missing} does not exist" in flat(result.output)


def test_validate_with_an_unknown_format_exits_2_listing_the_formats(cli: Cli) -> None:
    result = cli("plan", "validate", str(FIXTURE), "--format", "toml")

    assert result.exit_code == 2
    assert "'toml' is not one of 'json', 'yaml', 'markdown'" in flat(result.output)


def test_a_table_read_as_yaml_is_invalid_and_says_so(cli: Cli) -> None:
    result = cli("plan", "validate", str(FIXTURE), "--format", "yaml")

    assert result.exit_code == 2
    assert "error: invalid plan" in flat(result.output)


# -- plan waves ---------------------------------------------------------------------------------


def test_waves_with_2_agents_put_every_dependency_of_the_18_issues_in_an_earlier_wave(
    cli: Cli,
) -> None:
    plan = parse_plan(FIXTURE.read_text())

    output = cli.ok("plan", "waves", str(FIXTURE), "--agents", "2")

    wave_of: dict[str, int] = {}
    current = 0
    for line in output.splitlines():
        row = cells(line)
        if len(row) != 4 or not re.fullmatch(r"\d{3}", row[1]):
            continue
        current = int(row[0]) if row[0] else current
        wave_of[row[1]] = current
        assert row[2] == plan.node(row[1]).title
        assert row[3] == ", ".join(plan.dependencies(row[1]))
    assert sorted(wave_of) == sorted(node.id for node in plan.nodes)  # each node, once
    for node in plan.nodes:
        for dependency in plan.dependencies(node.id):
            assert wave_of[dependency] < wave_of[node.id], (dependency, node.id)
    sizes = [list(wave_of.values()).count(w) for w in range(1, current + 1)]
    assert all(1 <= size <= 2 for size in sizes), sizes
    assert f"18 nodes in {current} waves with 2 agents (plan concurrency 4)" in flat(output)
    assert f"critical path (7 nodes): {' → '.join(critical_path(plan))}" in flat(output)


def test_waves_as_json_are_the_pure_schedule(cli: Cli) -> None:
    plan = parse_plan(FIXTURE.read_text())
    expected = plan_waves(plan, 2)

    data = json.loads(cli.ok("plan", "waves", str(FIXTURE), "--agents", "2", "--json"))

    assert data["agents"] == 2
    assert data["waves"] == expected.waves
    assert data["critical_path"] == expected.critical_path
    assert data["critical_path_length"] == expected.critical_path_length == 7


def test_waves_never_put_conflicting_claims_together(cli: Cli, tmp_path: Path) -> None:
    plan = {
        "nodes": [
            {"id": "api", "claims": ["src/**"], "mode": "write"},
            {"id": "fix", "claims": ["src/a.ts"], "mode": "write"},
            {"id": "read1", "claims": ["docs/x.md"], "mode": "read"},
            {"id": "read2", "claims": ["docs/x.md"], "mode": "read"},
        ]
    }

    data = json.loads(
        cli.ok("plan", "waves", str(write(tmp_path, "p.json", plan)), "--agents", "4", "--json")
    )

    assert data["waves"] == [["api", "read1", "read2"], ["fix"]]


def test_waves_default_to_the_plans_concurrency(cli: Cli) -> None:
    output = flat(cli.ok("plan", "waves", str(FIXTURE)))

    assert "with 4 agents (plan concurrency 4)" in output


@pytest.mark.parametrize("agents", ["0", "-1", "two"])
def test_waves_with_a_bad_agent_count_exit_2(cli: Cli, agents: str) -> None:
    result = cli("plan", "waves", str(FIXTURE), "--agents", agents)

    assert result.exit_code == 2
    assert "Invalid value for '--agents'" in flat(result.output)


def test_waves_of_a_cyclic_plan_exit_2_naming_the_cycle(cli: Cli, tmp_path: Path) -> None:
    result = cli("plan", "waves", str(write(tmp_path, "c.json", CYCLE)), "--agents", "2")

    assert result.exit_code == 2
    assert "dependency cycle build -> test -> build" in flat(result.output)


def test_run_of_an_invalid_plan_exits_2_before_calling_the_api(cli: Cli, tmp_path: Path) -> None:
    # The API URL is unreachable: reaching for it would exit 1, not 2.
    result = cli("plan", "run", str(write(tmp_path, "c.json", CYCLE)))

    assert result.exit_code == 2
    assert "dependency cycle" in flat(result.output)


# -- the live view --------------------------------------------------------------------------------


def _execution(node_ids: list[str], deps: dict[str, list[str]] | None = None) -> dict[str, Any]:
    blank = {"status": "pending", "job_id": None, "attempt": 0}
    nodes = [
        {"id": n, "title": f"task {n}", **blank, "depends_on": (deps or {}).get(n, [])}
        for n in node_ids
    ]
    return {"id": "ex1", "name": "demo", "status": "running", "nodes": nodes}


def _event(kind: str, **payload: Any) -> StreamEvent:
    data = {"type": kind, "payload": payload, "created_at": "2026-01-01T10:00:00+00:00"}
    return StreamEvent("1", kind, data)


def _render(view: ExecutionView, height: int = 40) -> str:
    screen = Console(file=io.StringIO(), record=True, width=160, height=height, force_terminal=True)
    screen.print(view)
    return screen.export_text()


def test_the_live_view_shows_what_a_pending_node_waits_for() -> None:
    view = ExecutionView(_execution(["a", "b", "c"], {"c": ["a", "b"]}))

    view.apply(_event("task.started", node="a", job_id="0123456789abcdef"))
    view.apply(_event("task.completed", node="a"))
    screen = _render(view)

    rows = {cells(line)[0]: cells(line) for line in screen.splitlines() if "│" in line}
    assert rows["c"][5] == "after b"
    assert rows["b"][5] == ""


def test_the_live_view_does_not_apply_again_what_its_last_read_already_shows() -> None:
    execution = _execution(["a"])
    execution["last_event_seq"] = 5
    execution["nodes"][0].update(status="running", attempt=1)
    view = ExecutionView(execution)

    replayed = StreamEvent("3", "task.ready", {"type": "task.ready", "payload": {"node": "a"}})
    view.apply(replayed)  # history the stream replays first
    assert (view.nodes["a"]["status"], view.nodes["a"]["attempt"]) == ("running", 1)

    new = StreamEvent("6", "task.completed", {"type": "task.completed", "payload": {"node": "a"}})
    view.apply(new)
    assert view.nodes["a"]["status"] == "completed"


def test_the_live_view_applies_task_events_to_its_rows() -> None:
    view = ExecutionView(_execution(["a", "b", "c"]))

    view.apply(_event("task.ready", node="a"))
    view.apply(_event("task.started", node="a", job_id="0123456789abcdef"))
    view.apply(_event("task.completed", node="a"))
    view.apply(_event("task.started", node="b", job_id="fedcba9876543210"))
    view.apply(_event("task.failed", node="b", error="exit code 3"))
    view.apply(_event("lock.contended", node="c", holders=["ex1/b", "other/x"]))
    view.apply(_event("execution.failed", status="failed"))
    screen = _render(view)

    rows = {cells(line)[0]: cells(line) for line in screen.splitlines() if "│" in line}
    assert rows["a"][2:4] == ["completed", "89abcdef"]  # the end: UUIDv7s start alike
    assert rows["b"][2:4] == ["failed", "76543210"]
    assert rows["b"][5] == "exit code 3"
    assert rows["c"][2] == "pending"
    assert rows["c"][5] == "waits for b, other/x"
    assert "execution ex1 demo failed" in flat(screen)
    assert "completed 1/3 · failed 1" in flat(screen)


def test_the_live_view_shows_what_runs_first_when_the_plan_does_not_fit() -> None:
    view = ExecutionView(_execution([f"n{i:02}" for i in range(50)]))
    for i in (3, 40, 47):
        view.apply(_event("task.started", node=f"n{i:02}", job_id="0" * 16))

    screen = _render(view, height=12)

    rows = [cells(line)[0] for line in screen.splitlines() if "│" in line]
    assert len(screen.splitlines()) <= 12  # the whole view fits the terminal
    assert rows == ["n00", "n01", "n02", "n03", "n40", "n47", "…"]  # running ones, plan order
    assert "44 more nodes" in screen


def test_the_live_view_reports_a_deadlock_until_the_execution_runs_again() -> None:
    view = ExecutionView(_execution(["a"]))

    view.apply(_event("execution.deadlock", status="paused", blocked={"a": ["o/1"]},
                      holders=["o/1"], cycle=None))  # fmt: skip
    view.apply(_event("execution.paused", status="paused", reason="deadlock"))
    paused = _render(view)
    view.apply(_event("execution.resumed", status="running"))

    assert "deadlock, paused: a can never lock their claims (held by o/1)" in flat(paused)
    assert "deadlock" not in _render(view)


# -- against a real server ----------------------------------------------------------------------
