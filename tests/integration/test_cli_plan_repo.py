"""``stitchwork plan waves`` with a repository: its tree decides literal claims offline, as the
scheduler does for an execution on that checkout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.contract.agent_repos import make_repo
from tests.integration.cli_plan_helpers import Cli, flat, free_port, write


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


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A real git repository where ``lib/v1.2`` is a directory (its name reads like a file)."""
    return make_repo(tmp_path / "repo", {"lib/v1.2/x.py": ""}, config=None)


def plan_file(tmp_path: Path, repo: str | None = None) -> Path:
    plan: dict[str, Any] = {
        "concurrency": 2,
        "nodes": [
            {"id": "dir", "claims": ["lib/v1.2"]},
            {"id": "file", "claims": ["lib/v1.2/x.py"]},
        ],
    }
    if repo is not None:
        plan["repo"] = repo
    return write(tmp_path, "plan.json", plan)


def waves(cli: Cli, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli.ok("plan", "waves", *args, "--json"))
    return data


def test_repo_option_puts_a_dotted_directory_and_its_file_in_different_waves(
    cli: Cli, tmp_path: Path, checkout: Path
) -> None:
    path = str(plan_file(tmp_path))

    assert waves(cli, path)["waves"] == [["dir", "file"]]  # the naming rule: two files
    with_repo = waves(cli, path, "--repo", str(checkout))

    assert with_repo["waves"] == [["dir"], ["file"]]
    assert with_repo["repo_root"] == str(checkout.resolve())
    text = flat(cli.ok("plan", "waves", path, "--repo", str(checkout)))
    assert f"claims classified by the tree of {checkout.resolve()}" in text
    assert "in 2 waves" in text


def test_the_plans_repo_is_used_when_it_is_an_existing_directory(
    cli: Cli, tmp_path: Path, checkout: Path
) -> None:
    data = waves(cli, str(plan_file(tmp_path, str(checkout))))

    assert data["waves"] == [["dir"], ["file"]]
    assert data["repo_root"] == str(checkout)


@pytest.mark.parametrize("repo", ["shop", "/no/such/checkout"])
def test_a_plan_repo_that_is_a_name_or_missing_leaves_the_naming_rule(
    cli: Cli, tmp_path: Path, repo: str
) -> None:
    data = waves(cli, str(plan_file(tmp_path, repo)))

    assert data["waves"] == [["dir", "file"]]
    assert data["repo_root"] is None


def test_the_repo_option_overrides_the_plans_repo(cli: Cli, tmp_path: Path, checkout: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    path = str(plan_file(tmp_path, str(checkout)))

    assert waves(cli, path, "--repo", str(bare))["waves"] == [["dir", "file"]]


def test_a_repo_option_that_is_no_directory_exits_2(cli: Cli, tmp_path: Path) -> None:
    result = cli("plan", "waves", str(plan_file(tmp_path)), "--repo", str(tmp_path / "missing"))

    assert result.exit_code == 2
    assert "--repo" in flat(result.output)


def test_help_documents_the_repo_option(cli: Cli) -> None:
    text = flat(cli.ok("plan", "waves", "--help"))

    assert "--repo PATH" in text
    assert "lib/v1.2" in text
