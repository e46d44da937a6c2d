"""Fail points: a crash test's way to make a process die at a named place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stitchwork.runner.failpoints import ENV, failpoint

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(spec: str, point: str) -> int:
    code = (
        f"import sys; sys.path.insert(0, {SRC!r})\n"
        "from stitchwork.runner.failpoints import failpoint\n"
        f"failpoint({point!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], env={ENV: spec}, check=False).returncode


def test_a_failpoint_set_to_one_kills_the_process_there() -> None:
    assert _run("merge.swapped=1", "merge.swapped") == -9


def test_other_points_and_zero_probabilities_do_nothing() -> None:
    assert _run("merge.swapped=1,land.committed=0", "land.committed") == 0
    assert _run("merge.swapped=1", "merge.locked") == 0


def test_without_the_variable_no_failpoint_fires() -> None:
    assert _run("", "merge.swapped") == 0


@pytest.mark.parametrize("spec", ["merge.swapped=often", "merge.swapped=2"])
def test_a_bad_spec_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(ENV, spec)
    with pytest.raises(ValueError, match=ENV):
        failpoint("merge.swapped")
