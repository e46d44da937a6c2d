"""``stitchwork chat`` end to end: a real process, driven through its stdin and stdout.

``fix #42`` starts an agent job on a real git repository (a command agent from the
repository's ``stitchwork.toml``, waiting for the test's go-ahead), the herald's updates are
printed as the job runs, and ``status``, ``verbose``, ``cancel`` and ``retry`` work on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.agent_repos import make_repo, show
from tests.e2e.conftest import FAST_TIMINGS

pytestmark = pytest.mark.slow

# The agent says what it does, then waits (saying so every 0.3 s) until the test creates
# the go-ahead file, then writes its fix.
AGENT_SCRIPT = """\
echo "agent: looking at $1"
i=0
while [ ! -e "$2" ]; do
  i=$((i+1))
  [ "$i" -gt 400 ] && exit 1
  echo "agent: waiting for review $i"
  sleep 0.3
done
echo "fixed $1" > fixed.txt
echo "agent: wrote the fix"
"""
CONFIG = """\
default_profile = "fixer"

[profiles.fixer]
adapter = "command"
command = "sh agent.sh {{issue_ref}} {go}"
capabilities = ["repo:read", "repo:write", "git:commit", "git:merge", "shell:exec"]
"""
WAIT_S = 45.0  # per expected line; generous for a loaded CI machine


class Repl:
    """The ``stitchwork chat`` process: write a line, wait for the output that answers it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._seen = 0

    async def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, *, timeout_s: float = WAIT_S) -> re.Match[str]:
        """The first line from here on that matches ``pattern`` (earlier lines are skipped)."""
        assert self.proc.stdout is not None
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                if found := compiled.search(line):
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                shown = "\n".join(self.lines[-40:])
                raise AssertionError(f"no line matched {pattern!r}; the REPL said:\n{shown}")
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not raw:
                raise AssertionError(
                    f"the REPL ended before {pattern!r}:\n" + "\n".join(self.lines)
                )
            self.lines.append(raw.decode("utf-8").rstrip("\n"))


@pytest.fixture
async def repl(tmp_path: Path) -> AsyncIterator[tuple[Repl, Path, Path]]:
    # In the repository's .git: the agent's sandbox shows it that (read-only), not tmp_path.
    go = tmp_path / "app" / ".git" / "go-ahead"
    repo = make_repo(
        tmp_path / "app",
        {"agent.sh": AGENT_SCRIPT, "README.md": "app\n"},
        config=CONFIG.format(go=go),
    )
    env = {
        **os.environ,
        **FAST_TIMINGS,
        "STITCHWORK_LOG_LEVEL": "warning",
        "STITCHWORK_DATA_DIR": str(tmp_path / "data"),
        "STITCHWORK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        "STITCHWORK_CHAT_REPOS": json.dumps({"acme/app": str(repo)}),
        "STITCHWORK_CHAT_CHANNEL_REPOS": json.dumps({"console": "acme/app"}),
        "PYTHONIOENCODING": "utf-8",
        # Every update as its own line here: coalescing is the herald's and Discord's tests'.
        "STITCHWORK_CHAT_RATE_MESSAGES": "100",
        "STITCHWORK_CHAT_RATE_WINDOW_S": "1",
    }
    with (tmp_path / "chat.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stitchwork.cli.main",
            "chat",
            "--user",
            "alice",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
        )
        try:
            yield Repl(proc), repo, go
        finally:
            if proc.returncode is None:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()


async def test_fix_runs_an_agent_job_that_the_repl_follows_cancels_and_retries(
    repl: tuple[Repl, Path, Path],
) -> None:
    chat, repo, go = repl
    await chat.expect(r"^stitchwork chat: type commands")

    await chat.say("fix #42")
    await chat.expect(
        r"^stitch \[acme/app#42: fix\]: alice asked me to fix acme/app#42\. Updates follow"
    )
    job_id = (await chat.expect(r"Started job ([0-9a-f-]{36}) for acme/app#42")).group(1)
    label = rf"Job {job_id[:8]}[0-9a-f-]* for acme/app#42"  # the id, or the start of it
    await chat.expect(rf"^stitch: Job {job_id} for acme/app#42 is queued; its thread has")
    await chat.expect(rf"^stitch: 🔵 {label} started\.")  # the herald, in the channel

    await chat.say("@stitch verbose #42")  # the mention is optional, and allowed
    await chat.expect(rf"^stitch: Live output of job {job_id} goes to its thread now\.")
    await chat.expect(r"agent: waiting for review \d+")  # live output, printed as it comes

    await chat.say("status #42")
    await chat.expect(rf"^stitch: Job {job_id} \(agent-task, acme/app#42\) is running, attempt 1")

    await chat.say("cancel #42")
    await chat.expect(rf"^stitch: Job {job_id} is cancelled \(it was running\)\.")
    await chat.expect(rf"^stitch: ⏸️ {label} was cancelled")

    go.touch()
    await chat.say("retry #42")
    await chat.expect(rf"^stitch: Job {job_id} is queued again \(attempt 2\)\.")
    await chat.expect(rf"{label} started, attempt 2\.")
    await chat.expect(rf"^stitch: ✅ {label} completed in ")

    await chat.say("status #42")
    await chat.expect(rf"^stitch: Job {job_id} \(agent-task, acme/app#42\) is completed, attempt 2")
    assert show(repo, "main", "fixed.txt") == "fixed acme/app#42"

    await chat.say("jobs")
    await chat.expect(rf"^\s+{job_id}  agent-task for acme/app#42: completed")

    assert chat.proc.stdin is not None
    chat.proc.stdin.close()  # end of input: the REPL and its engine shut down
    assert await asyncio.wait_for(chat.proc.wait(), WAIT_S) == 0
