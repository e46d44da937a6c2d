"""The demo's sample repository and plan: a valid plan of valid agent tasks with two parallel
branches that join, one pair of overlapping claims, every edit inside its task's claims, one
task that fails lint on attempt 1 and fixes it on attempt 2, and files whose gates pass, both
on the first commit and once every task's edits are applied.

The gate tests run the sample repository's own gate commands (fast stdlib subprocesses, no
server, no sleep) on files written to ``tmp_path``; one test makes a real git repository.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stitchwork.cli.demo_repo import (
    CONCURRENCY,
    FLAKY_TASK,
    NOTES_FILE,
    TARGET_BRANCH,
    TASKS,
    USER_BRANCH,
    create_sample_repo,
    demo_plan,
    gate_commands,
    git,
    repo_config,
    sample_files,
    task_script,
    write_files,
)
from stitchwork.domain.claims import covers, overlaps
from stitchwork.domain.plans import Plan, parse_plan
from stitchwork.domain.repo_config import load_repo_config
from stitchwork.domain.scripts import parse_script
from stitchwork.services.job_types import AgentTaskPayload, JobTypeCatalog
from stitchwork.services.stitcher import node_job

PYTHON = sys.executable
REPO = Path("/tmp/demo/shop")


def _plan() -> Plan:
    return parse_plan(json.dumps(demo_plan(REPO, PYTHON)), format="json")


def test_the_plan_validates_with_eight_agent_tasks_whose_payloads_are_valid() -> None:
    plan = _plan()
    assert [n.id for n in plan.nodes] == [t.id for t in TASKS]
    assert len(plan.nodes) == 8
    assert plan.concurrency == CONCURRENCY == 3
    assert plan.repo == str(REPO)
    for node in plan.nodes:
        job = node_job(node, str(REPO))  # what the scheduler submits: claims in the payload
        payload = JobTypeCatalog().validate("agent-task", job.payload)
        task = AgentTaskPayload.model_validate(payload)
        assert task.repo == str(REPO)
        assert task.target_branch == TARGET_BRANCH
        assert task.claims == list(node.claims)
        assert task.issue_ref is not None
        assert task.issue_ref.startswith("demo/app#")
        assert job.issue_ref == task.issue_ref
        assert task.prompt.splitlines()[0] == node.title


def test_two_parallel_branches_start_together_and_later_join() -> None:
    plan = _plan()
    roots = [n.id for n in plan.nodes if not plan.dependencies(n.id)]
    joins = {n.id: plan.dependencies(n.id) for n in plan.nodes if len(plan.dependencies(n.id)) > 1}
    assert len(roots) >= 2
    assert joins == {"receipt": ("cart-discounts", FLAKY_TASK), "cli": ("receipt", "catalog-csv")}
    assert plan.dependents("money") == ("discounts", FLAKY_TASK)  # a fork after money


def test_only_the_two_catalog_tasks_claim_the_same_file_and_neither_waits_for_the_other() -> None:
    plan = _plan()
    overlapping = [
        (a.id, b.id)
        for a, b in itertools.combinations(plan.nodes, 2)
        if any(overlaps(x, y) for x in a.claims for y in b.claims)
    ]
    assert overlapping == [("catalog-search", "catalog-csv")]
    # Both are roots: only their claims keep them apart, so the scheduler must serialize them.
    assert plan.dependencies("catalog-search") == plan.dependencies("catalog-csv") == ()


def test_every_task_edits_only_paths_its_claims_cover_on_every_attempt() -> None:
    plan = _plan()
    for node in plan.nodes:
        attempts = {1, *(int(k) for k in node.payload.get("on_attempt", {}))}
        for attempt in attempts:
            for action in parse_script(node.payload, attempt):
                path = action.get("write") or action.get("append")
                if path is not None:
                    assert any(covers(c, path) for c in node.claims), (node.id, path)


def test_the_flaky_task_leaves_a_trailing_space_on_attempt_1_and_removes_it_on_attempt_2() -> None:
    plan = _plan()
    payload = plan.node(FLAKY_TASK).payload
    assert set(payload["on_attempt"]) == {"2"}
    first = {a["write"]: a["content"] for a in parse_script(payload, 1) if "write" in a}
    second = {a["write"]: a["content"] for a in parse_script(payload, 2) if "write" in a}
    assert any(line.endswith(" ") for line in first["shop/tax.py"].splitlines())
    assert not any(line.endswith(" ") for line in second["shop/tax.py"].splitlines())
    assert second["shop/tax.py"] == first["shop/tax.py"].replace(" \n", "\n")
    others = [n for n in plan.nodes if n.id != FLAKY_TASK]
    assert not any("on_attempt" in n.payload for n in others)


@pytest.mark.parametrize("python", [PYTHON, '/opt/my "py"/bin/python3', "C:\\py\\python.exe"])
def test_the_repo_config_runs_lint_and_tests_with_the_given_interpreter(python: str) -> None:
    config = load_repo_config(repo_config(python))
    assert config.mandatory_gates("agent-task") == ("claims", "lint", "tests")
    assert config.max_gate_attempts == 3
    gates = gate_commands(python)
    assert config.gates["lint"].command == tuple(gates["lint"])
    assert config.gates["tests"].command == tuple(gates["tests"])
    assert tomllib.loads(repo_config(python))["gates"]["lint"]["command"][0] == python


def _gates(root: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    return {
        name: subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=60)
        for name, argv in gate_commands(PYTHON).items()
    }


def _apply(root: Path, script: list[dict[str, Any]]) -> None:
    """The script agent's file edits (its runs are the gates' job here)."""
    for action in script:
        if "write" in action:
            (root / action["write"]).write_text(action["content"])
        elif "append" in action:
            with (root / action["append"]).open("a") as fh:
                fh.write(action["content"])


def test_the_sample_files_pass_their_gates(tmp_path: Path) -> None:
    write_files(tmp_path, sample_files(PYTHON))
    results = _gates(tmp_path)
    assert results["lint"].returncode == 0, results["lint"].stdout
    assert results["tests"].returncode == 0, results["tests"].stderr
    assert "Ran 2 tests" in results["tests"].stderr


def test_lint_reports_trailing_whitespace_tabs_and_markers(tmp_path: Path) -> None:
    write_files(tmp_path, sample_files(PYTHON))
    (tmp_path / "shop" / "bad.py").write_text("x = 1 \n\ty = 2\n# " + "X" * 3 + " later\n")
    lint = _gates(tmp_path)["lint"]
    assert lint.returncode == 1
    assert lint.stdout.splitlines() == [
        "shop/bad.py:1: trailing whitespace",
        "shop/bad.py:2: tab character",
        "shop/bad.py:3: leftover " + "X" * 3 + " marker",
        "lint: 3 problem(s)",
    ]


def test_the_tasks_applied_in_plan_order_pass_the_gates_after_the_flaky_fix(
    tmp_path: Path,
) -> None:
    write_files(tmp_path, sample_files(PYTHON))
    plan = _plan()
    for node_id in plan.topological_order():
        task = next(t for t in TASKS if t.id == node_id)
        _apply(tmp_path, task_script(task, PYTHON))
        if node_id == FLAKY_TASK:
            results = _gates(tmp_path)
            assert results["tests"].returncode == 0  # the agent's tests pass on attempt 1 ...
            assert results["lint"].returncode == 1  # ... but lint rejects it
            assert "shop/tax.py:5: trailing whitespace" in results["lint"].stdout
            _apply(tmp_path, task_script(task, PYTHON, attempt=2))
    results = _gates(tmp_path)
    assert results["lint"].returncode == 0, results["lint"].stdout
    assert results["tests"].returncode == 0, results["tests"].stderr
    receipt = subprocess.run(
        [PYTHON, "-m", "shop", "tea:2", "mug", "--code", "WELCOME10"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert receipt.stdout.splitlines()[-1].split() == ["total", "$20.27"]


def test_the_sample_repo_leaves_main_unchecked_out_and_the_user_notes_uncommitted(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "shop"
    first = create_sample_repo(repo, PYTHON)
    assert git(repo, "rev-parse", TARGET_BRANCH) == first
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == USER_BRANCH
    assert git(repo, "status", "--porcelain") == f"?? {NOTES_FILE}"
    tracked = git(repo, "ls-tree", "-r", "--name-only", TARGET_BRANCH).splitlines()
    assert sorted(tracked) == sorted(sample_files(PYTHON))
    assert git(repo, "log", "--format=%an", TARGET_BRANCH) == "Demo User"
