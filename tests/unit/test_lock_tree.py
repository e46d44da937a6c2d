"""Lock tables and plan previews that know the repository's tree: a literal claim that exists
there as a directory is a directory claim, whatever its name looks like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stitchwork.domain.claims import repo_root_of
from stitchwork.domain.locks import LockMode, LockTable
from stitchwork.domain.plans import parse_plan
from stitchwork.services.executions import plan_waves

WRITE = LockMode.WRITE


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout where ``lib/v1.2`` is a directory (its name reads like a file's)."""
    (tmp_path / "lib" / "v1.2").mkdir(parents=True)
    (tmp_path / "lib" / "v1.2" / "x.py").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    ("first", "second"), [("lib/v1.2", "lib/v1.2/x.py"), ("lib/v1.2/x.py", "lib/v1.2")]
)
def test_a_dotted_directory_blocks_what_is_beneath_it_when_the_tree_is_known(
    repo: Path, first: str, second: str
) -> None:
    table = LockTable(repo_root=repo)
    assert table.try_acquire("a", [(first, WRITE)]) == []

    conflicts = table.try_acquire("b", [(second, WRITE)])

    assert [(c.claim, c.held_claim, c.holder) for c in conflicts] == [(second, first, "a")]
    assert table.holders() == {"a"}


@pytest.mark.parametrize(
    ("first", "second"), [("lib/v1.2", "lib/v1.2/x.py"), ("lib/v1.2/x.py", "lib/v1.2")]
)
def test_without_the_tree_the_naming_rule_makes_the_dotted_name_a_file(
    repo: Path, first: str, second: str
) -> None:
    table = LockTable()
    assert table.try_acquire("a", [(first, WRITE)]) == []
    assert table.try_acquire("b", [(second, WRITE)]) == []
    assert table.holders() == {"a", "b"}


def test_a_dotted_name_that_is_a_file_in_the_tree_stays_a_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "v1.2").write_text("a file\n")
    table = LockTable(repo_root=tmp_path)
    assert table.try_acquire("a", [("lib/v1.2", WRITE)]) == []
    assert table.try_acquire("b", [("lib/v1.2/x.py", WRITE)]) == []


def test_only_an_absolute_path_of_an_existing_directory_is_a_tree(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert repo_root_of(str(tmp_path)) == tmp_path
    assert repo_root_of("default") is None  # a plain name
    assert repo_root_of("owner/repo") is None
    assert repo_root_of(str(tmp_path / "missing")) is None
    assert repo_root_of(str(tmp_path / "file")) is None
    assert repo_root_of("") is None
    assert repo_root_of(None) is None


def test_waves_separate_a_dotted_directory_from_its_files_only_with_the_tree(repo: Path) -> None:
    plan = parse_plan(
        json.dumps(
            {
                "concurrency": 2,
                "nodes": [
                    {"id": "dir", "claims": ["lib/v1.2"]},
                    {"id": "file", "claims": ["lib/v1.2/x.py"]},
                ],
            }
        )
    )
    assert plan_waves(plan, 2).waves == [["dir", "file"]]
    assert plan_waves(plan, 2, repo_root=repo).waves == [["dir"], ["file"]]
