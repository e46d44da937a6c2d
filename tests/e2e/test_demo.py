"""``stitchwork demo`` as ``make demo`` runs it: a real process that runs the plan of agent
tasks on its sample repository, exits 0 and tells what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stitchwork.cli.demo_repo import FLAKY_TASK, TASKS

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_the_demo_merges_every_task_into_main_and_exits_0(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STITCHWORK_DATA_DIR": str(tmp_path / "data"),
        "TMPDIR": str(tmp_path),  # the demo's folder, which it removes at the end
        "COLUMNS": "200",  # no table cell cut short in a pipe's default 80 columns
    }
    done = subprocess.run(
        [sys.executable, "-m", "stitchwork.cli.main", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    # The summary table: one row per task, every one completed, the flaky one on attempt 2.
    summary = out[out.index("┃ rejections ┃") :]
    for task in TASKS:
        row = re.search(rf"^ {re.escape(task.id)} +│ (.*)$", summary, re.MULTILINE)
        assert row is not None, f"no summary row for {task.id}"
        cells = [cell.strip() for cell in row[1].split("│")]
        assert cells[:2] == [task.issue_ref, "completed"], row[0]
        attempts, rejections = (2, 1) if task.id == FLAKY_TASK else (1, 0)
        assert cells[2:4] == [str(attempts), str(rejections)], row[0]
        assert re.fullmatch(r"[0-9a-f]{8}", cells[4]), row[0]

    # main's history: the first commit, and each task's commit with its own merge.
    assert "git log --oneline --graph main" in out
    assert re.search(r"^\* [0-9a-f]{7,} Start the shop package$", out, re.MULTILINE)
    for task in TASKS:
        line = re.search(rf"^([*|/\\_ ]+) [0-9a-f]{{7,}} {re.escape(task.title)}$", out, re.M)
        assert line is not None, f"no commit {task.title!r} in the log"
        assert "*" in line[1]
    assert len(re.findall(r"[0-9a-f]{7,} Merge stitchwork/", out)) == len(TASKS)

    # Every check held, and the live view saw the lock contention and the end.
    assert "✗" not in out
    assert out.count("✓") == 6
    assert re.search(r"lock\.contended +catalog-(csv|search) ", out)
    assert "completed: 8 completed" in out
    assert not list(tmp_path.glob("stitchwork-demo-*")), "the demo left its folder behind"
