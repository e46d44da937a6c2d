"""Agent adapters with real subprocesses: the command agent (text and Claude stream-json),
literal argument passing, timeouts, stops and cancellation that end a whole process group, the
deterministic script agent, and ``run_process`` itself."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stitchwork.errors import ConfigError, InvalidRequest
from stitchwork.runner.adapters import adapter_for
from stitchwork.runner.agents import (
    CLAUDE_CODE_COMMAND,
    AgentOutcome,
    AgentTask,
    CommandAgent,
    render_command,
)
from stitchwork.runner.process import run_process
from stitchwork.runner.script_agent import ScriptAgent

FIXTURE = Path(__file__).parent.parent / "fixtures" / "claude_stream.jsonl"
RESULT_TEXT = "Fixed `add` in `src/calc.py`: it subtracted instead of adding. All 3 tests pass."
GRACE_S = 0.5

# Prints a stream-json transcript line by line, like `claude -p --output-format stream-json`.
STREAM_AGENT = """
import sys, time
transcript, exit_code = sys.argv[1], int(sys.argv[2])
print("warning: not JSON, on stderr", file=sys.stderr, flush=True)
for line in open(transcript, encoding="utf-8"):
    sys.stdout.write(line)
    sys.stdout.flush()
    time.sleep(0.005)
sys.exit(exit_code)
"""

# Reports the arguments it got and what its prompt file holds.
ECHO_AGENT = """
import json, os, sys
args = sys.argv[1:]
prompt_file = args[args.index("--file") + 1]
print(json.dumps({
    "argv": args,
    "cwd": os.getcwd(),
    "prompt_file_content": open(prompt_file, encoding="utf-8").read(),
}))
"""

# Starts a grandchild, writes both pids, then waits for ever (optionally deaf to SIGTERM).
GROUP_AGENT = """
import signal, subprocess, sys, time
pids_file, ignore_term = sys.argv[1], sys.argv[2] == "ignore-term"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild through exec
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(pids_file + ".tmp", "w") as fh:
    fh.write(f"{__import__('os').getpid()} {child.pid}")
__import__("os").replace(pids_file + ".tmp", pids_file)
print("working", flush=True)
time.sleep(60)
"""


class RecordingSink:
    """An ``AgentSink`` that keeps every call."""

    def __init__(self) -> None:
        self.outputs: list[str] = []
        self.tools: list[tuple[str, dict[str, Any]]] = []
        self.token_calls: list[tuple[int, int]] = []

    async def output(self, text: str) -> None:
        self.outputs.append(text)

    async def tool_called(self, name: str, summary: dict[str, Any]) -> None:
        self.tools.append((name, summary))

    async def tokens(self, tokens_input: int, tokens_output: int) -> None:
        self.token_calls.append((tokens_input, tokens_output))

    @property
    def text(self) -> str:
        return "".join(self.outputs)


def _script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / "agents" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(source)
    return path


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "worktree"
    path.mkdir()
    return path.resolve()


def _task(worktree: Path, **kw: Any) -> AgentTask:
    return AgentTask(prompt=kw.pop("prompt", "fix the bug"), worktree=worktree, **kw)


def _dead(pid: int) -> bool:
    """Whether ``pid`` is gone: ``os.kill(pid, 0)`` fails, or only a zombie is left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _exists(path: Path) -> bool:
    return path.exists()


def _read_pids(path: Path) -> list[int] | None:
    return [int(p) for p in path.read_text().split()] if path.exists() else None


async def _pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while (pids := _read_pids(path)) is None:
        assert time.monotonic() < deadline, "the agent never wrote its pids"
        await asyncio.sleep(0.02)
    return pids


# -- command agent: Claude stream-json ---------------------------------------------------------


async def test_stream_json_agent_reports_tools_tokens_text_and_result(
    tmp_path: Path, worktree: Path
) -> None:
    agent_py = _script(tmp_path, "stream.py", STREAM_AGENT)
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(FIXTURE), "0"], output_format="claude-stream-json"
    )
    sink = RecordingSink()
    outcome = await agent.run(_task(worktree), sink)

    assert outcome == AgentOutcome(
        ok=True,
        exit_code=0,
        summary=RESULT_TEXT,
        tokens_input=6 + 5390 + 61559,
        tokens_output=633,
    )
    assert [name for name, _ in sink.tools] == ["Read", "Edit", "Bash"]
    assert sink.tools[2][1] == {
        "id": "toolu_01Wd5tN8qGz3XhK6mPv2RcYs",
        "input": {"command": "python -m pytest -q", "description": "Run the test suite"},
    }
    assert tuple(map(sum, zip(*sink.token_calls, strict=True))) == (66955, 633)
    lines = sink.text.splitlines()
    assert lines[0] == "warning: not JSON, on stderr"  # not JSON: passed through as it is
    assert "→ Bash python -m pytest -q" in lines
    assert lines[-2:] == [RESULT_TEXT, "[result] success, 7 turns, $0.0481"]
    assert not any(line.startswith("{") for line in lines)  # no raw JSON leaks into the output


async def test_stream_json_agent_exiting_non_zero_fails_but_keeps_its_tokens(
    tmp_path: Path, worktree: Path
) -> None:
    agent_py = _script(tmp_path, "stream.py", STREAM_AGENT)
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(FIXTURE), "3"], output_format="claude-stream-json"
    )
    outcome = await agent.run(_task(worktree), RecordingSink())
    assert (outcome.ok, outcome.exit_code, outcome.error) == (
        False,
        3,
        "agent exited with code 3",
    )
    assert (outcome.tokens_input, outcome.tokens_output) == (66955, 633)


async def test_stream_json_error_result_fails_the_outcome_despite_exit_0(
    tmp_path: Path, worktree: Path
) -> None:
    transcript = tmp_path / "error.jsonl"
    transcript.write_text(
        json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True}) + "\n"
    )
    agent_py = _script(tmp_path, "stream.py", STREAM_AGENT)
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(transcript), "0"], output_format="claude-stream-json"
    )
    outcome = await agent.run(_task(worktree), RecordingSink())
    assert (outcome.ok, outcome.exit_code) == (False, 0)
    assert outcome.error == "agent reported an error (error_max_turns)"


# -- command agent: text, arguments, start failures --------------------------------------------


async def test_text_agent_output_is_passed_on_unchanged_and_summarised_by_its_tail(
    worktree: Path,
) -> None:
    code = "import sys; print('one'); print('two', file=sys.stderr); print('three')"
    agent = CommandAgent([sys.executable, "-c", code])
    sink = RecordingSink()
    outcome = await agent.run(_task(worktree), sink)
    assert sink.text == "one\ntwo\nthree\n"
    assert (outcome.ok, outcome.exit_code, outcome.summary) == (True, 0, "one\ntwo\nthree")
    assert (outcome.tokens_input, outcome.tokens_output, sink.tools) == (0, 0, [])


@pytest.mark.parametrize(
    "prompt",
    [
        'fix it"; touch PWNED #',
        "'; touch PWNED; echo '",
        "$(touch PWNED) `touch PWNED` && touch PWNED | cat > PWNED",
        '"; rm -rf ../canary #',  # the brief's `"; rm -rf / #`, aimed at a canary instead of /
        "line one\nline two\n\ttabbed {worktree} {prompt} \\ end",
    ],
)
async def test_template_values_stay_one_literal_argument_and_reach_no_shell(
    tmp_path: Path, worktree: Path, prompt: str
) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    echo = _script(tmp_path, "echo.py", ECHO_AGENT)
    template = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(echo))} --prompt {{prompt}} "
        "--inline=<{prompt}> --file {prompt_file} --wt {worktree} --issue {issue_ref} "
        '\'{"json": {"left": "alone"}}\''
    )
    sink = RecordingSink()
    outcome = await CommandAgent(template).run(
        _task(worktree, prompt=prompt, issue_ref="GH-7"), sink
    )
    assert outcome.ok, outcome

    seen = json.loads(sink.text)
    prompt_file = seen["argv"][4]
    assert seen["argv"] == [
        "--prompt",
        prompt,
        f"--inline=<{prompt}>",
        "--file",
        prompt_file,
        "--wt",
        str(worktree),
        "--issue",
        "GH-7",
        '{"json": {"left": "alone"}}',
    ]
    assert seen["prompt_file_content"] == prompt
    assert seen["cwd"] == str(worktree)
    # The prompt file lived outside the worktree and is gone after the run.
    assert not prompt_file.startswith(str(worktree))
    assert not _exists(Path(prompt_file))
    assert _names(worktree) == []  # nothing ran `touch PWNED`
    assert canary.is_dir()


async def test_list_template_fills_placeholders_and_keeps_an_empty_issue_ref(
    tmp_path: Path, worktree: Path
) -> None:
    echo = _script(tmp_path, "echo.py", ECHO_AGENT)
    template = [sys.executable, str(echo), "--file", "{prompt_file}", "{prompt}", "{issue_ref}"]
    sink = RecordingSink()
    outcome = await CommandAgent(template).run(_task(worktree, prompt="a b  c"), sink)
    assert outcome.ok
    argv = json.loads(sink.text)["argv"]
    assert argv[2:] == ["a b  c", ""]


def test_render_command_inserts_values_once_and_rejects_broken_templates() -> None:
    values = {"prompt": "use {worktree} and {prompt}", "worktree": "/wt"}
    assert render_command("agent {prompt} {worktree} {other}", values) == [
        "agent",
        "use {worktree} and {prompt}",
        "/wt",
        "{other}",
    ]
    with pytest.raises(ConfigError, match="invalid agent command template"):
        render_command("agent 'unbalanced", values)
    with pytest.raises(ConfigError, match="empty"):
        render_command("   ", values)
    with pytest.raises(ConfigError):
        CommandAgent("agent 'unbalanced")


async def test_agent_that_cannot_start_is_a_failed_outcome(worktree: Path) -> None:
    outcome = await CommandAgent(["/nonexistent/agent", "{prompt}"]).run(
        _task(worktree), RecordingSink()
    )
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.error is not None
    assert outcome.error.startswith("could not start agent: [Errno 2]")


# -- ending a run: timeout, stop, cancellation -------------------------------------------------


@pytest.mark.parametrize("signal_mode", ["default", "ignore-term"])
async def test_timeout_kills_the_agent_and_its_grandchild(
    tmp_path: Path, worktree: Path, signal_mode: str
) -> None:
    agent_py = _script(tmp_path, "group.py", GROUP_AGENT)
    pids_file = tmp_path / "pids"
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(pids_file), signal_mode], grace_s=GRACE_S
    )
    sink = RecordingSink()
    started = time.monotonic()
    outcome = await agent.run(_task(worktree, timeout_s=1.0), sink)
    elapsed = time.monotonic() - started

    assert (outcome.ok, outcome.timed_out, outcome.error) == (
        False,
        True,
        "agent timed out after 1s",
    )
    assert outcome.exit_code == (-15 if signal_mode == "default" else -9)
    assert sink.text == "working\n"
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    assert [pid for pid in pids if not _dead(pid)] == []  # gone when run() returns, not later
    # SIGTERM is enough unless it is ignored; then SIGKILL follows after the grace period.
    if signal_mode == "default":
        assert elapsed < 1.0 + GRACE_S
    else:
        assert 1.0 + GRACE_S <= elapsed < 1.0 + 3 * GRACE_S + 1


@pytest.mark.parametrize("signal_mode", ["default", "ignore-term"])
async def test_cancelling_the_run_kills_the_group_within_the_grace_period(
    tmp_path: Path, worktree: Path, signal_mode: str
) -> None:
    agent_py = _script(tmp_path, "group.py", GROUP_AGENT)
    pids_file = tmp_path / "pids"
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(pids_file), signal_mode], grace_s=GRACE_S
    )
    running = asyncio.create_task(agent.run(_task(worktree), RecordingSink()))
    pids = await _pids(pids_file)
    assert not any(_dead(pid) for pid in pids)

    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    elapsed = time.monotonic() - started
    assert [pid for pid in pids if not _dead(pid)] == []
    assert elapsed < (GRACE_S if signal_mode == "default" else 2 * GRACE_S + 0.5)


async def test_stop_request_ends_the_agent_with_a_stopped_outcome(
    tmp_path: Path, worktree: Path
) -> None:
    agent_py = _script(tmp_path, "group.py", GROUP_AGENT)
    pids_file = tmp_path / "pids"
    stop = asyncio.Event()
    agent = CommandAgent(
        [sys.executable, str(agent_py), str(pids_file), "default"], grace_s=GRACE_S
    )
    running = asyncio.create_task(agent.run(_task(worktree, stop=stop), RecordingSink()))
    pids = await _pids(pids_file)
    stop.set()
    outcome = await asyncio.wait_for(running, 5)
    assert (outcome.ok, outcome.stopped, outcome.timed_out, outcome.error) == (
        False,
        True,
        False,
        "agent stopped on request",
    )
    assert all(_dead(pid) for pid in pids)


# -- script agent ------------------------------------------------------------------------------


async def test_script_actions_change_the_worktree_and_report_like_tool_calls(
    worktree: Path,
) -> None:
    script = [
        {"write": "a.txt", "content": "hello"},
        {"append": "a.txt", "content": " world\n"},
        {"write": "sub/dir/b.txt", "content": "b"},
        {"rename": ["sub/dir/b.txt", "c.txt"]},
        {"delete": "sub"},
        {"run": "cat a.txt; echo done"},
        {"run": ["sh", "-c", "echo $0", "argv form"]},
        {"sleep": 0.01},
        {"tokens": [120, 30]},
    ]
    sink = RecordingSink()
    outcome = await ScriptAgent().run(_task(worktree, payload={"script": script}), sink)

    assert outcome == AgentOutcome(
        ok=True,
        exit_code=0,
        summary="applied 9 script actions (attempt 1)",
        tokens_input=120,
        tokens_output=30,
    )
    assert _names(worktree) == ["a.txt", "c.txt"]
    assert (worktree / "a.txt").read_text() == "hello world\n"
    assert (worktree / "c.txt").read_text() == "b"
    names = [name for name, _ in sink.tools]
    assert names == [
        "write",
        "append",
        "write",
        "rename",
        "delete",
        "run",
        "run",
        "sleep",
        "tokens",
    ]
    assert sink.tools[0][1] == {"id": "script-1-1", "input": script[0]}
    assert sink.token_calls == [(120, 30)]
    assert sink.text.splitlines() == [
        "[1/9] write a.txt (5 chars)",
        "[2/9] append a.txt (7 chars)",
        "[3/9] write sub/dir/b.txt (1 chars)",
        "[4/9] rename sub/dir/b.txt -> c.txt",
        "[5/9] delete sub",
        "[6/9] run $ cat a.txt; echo done",
        "hello world",
        "done",
        "[7/9] run $ sh -c 'echo $0' 'argv form'",
        "argv form",
        "[8/9] sleep 0.01s",
        "[9/9] tokens 120 in, 30 out",
    ]


async def test_script_on_attempt_replaces_the_script_for_that_attempt(worktree: Path) -> None:
    payload = {
        "script": [{"write": "gate.txt", "content": "broken"}],
        "on_attempt": {"2": [{"write": "gate.txt", "content": "fixed"}]},
    }
    agent = ScriptAgent()
    contents = []
    for attempt in (1, 2, 3):
        outcome = await agent.run(
            _task(worktree, payload=payload, attempt=attempt), RecordingSink()
        )
        assert outcome.ok
        contents.append((worktree / "gate.txt").read_text())
    assert contents == ["broken", "fixed", "broken"]


async def test_script_failing_command_fails_the_run_and_stops_the_script(worktree: Path) -> None:
    script = [{"run": "echo failing; exit 4"}, {"write": "never.txt", "content": ""}]
    sink = RecordingSink()
    outcome = await ScriptAgent().run(_task(worktree, payload={"script": script}), sink)
    assert (outcome.ok, outcome.exit_code, outcome.error) == (
        False,
        4,
        "script action 1 (run) exited with code 4",
    )
    assert "failing\n" in sink.text
    assert not (worktree / "never.txt").exists()


async def test_script_missing_file_fails_the_run_with_the_reason(worktree: Path) -> None:
    outcome = await ScriptAgent().run(
        _task(worktree, payload={"script": [{"delete": "missing.txt"}]}), RecordingSink()
    )
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.error is not None
    assert outcome.error.startswith("script action 1 (delete) failed: [Errno 2]")


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"write": "/etc/stitchwork-test", "content": "x"}, "absolute path"),
        ({"write": "../outside.txt", "content": "x"}, "'..'"),
        ({"append": "a/../../outside.txt", "content": "x"}, "'..'"),
        ({"rename": ["ok.txt", "../moved.txt"]}, "'..'"),
        ({"delete": ".git/config"}, ".git"),
        ({"write": ".", "content": "x"}, "worktree itself"),
        ({"write": "a.txt"}, "exactly the keys"),
        ({"write": "a.txt", "content": 3}, "'content' must be a string"),
        ({"explode": "a.txt"}, "exactly one of"),
        ({"write": "a", "delete": "b", "content": ""}, "exactly one of"),
        ({"rename": "a.txt"}, "[from, to]"),
        ({"run": ""}, "non-empty command"),
        ({"run": ["ls", ""]}, "non-empty command"),
        ({"sleep": -1}, "between 0 and 3600"),
        ({"sleep": True}, "between 0 and 3600"),
        ({"tokens": [1]}, "two non-negative integers"),
        ("write a.txt", "exactly one of"),
    ],
)
async def test_script_refuses_unsafe_or_malformed_actions_before_applying_any(
    worktree: Path, action: Any, message: str
) -> None:
    script = [{"write": "first.txt", "content": "applied?"}, action]
    with pytest.raises(InvalidRequest, match="script action 2: ") as raised:
        await ScriptAgent().run(_task(worktree, payload={"script": script}), RecordingSink())
    assert message in str(raised.value)
    assert raised.value.fields["action"] == 2
    assert _names(worktree) == []
    assert not (worktree.parent / "outside.txt").exists()


@pytest.mark.parametrize(
    "payload",
    [{}, {"script": "write"}, {"script": [], "on_attempt": {"two": []}}, {"on_attempt": []}],
)
async def test_script_payload_without_a_usable_script_is_refused(
    worktree: Path, payload: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequest):
        await ScriptAgent().run(_task(worktree, payload=payload), RecordingSink())


async def test_script_refuses_paths_that_leave_through_a_symlink(
    tmp_path: Path, worktree: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("keep")
    (worktree / "dir-link").symlink_to(outside)
    (worktree / "file-link").symlink_to(outside / "target.txt")
    (worktree / "git-link").mkdir()
    (worktree / ".git").mkdir()
    (worktree / "git-link" / "up").symlink_to(worktree / ".git")
    agent = ScriptAgent()

    for action in (
        {"write": "dir-link/new.txt", "content": "x"},
        {"append": "file-link", "content": "x"},
        {"rename": ["dir-link/target.txt", "stolen.txt"]},
        {"write": "git-link/up/config", "content": "x"},
    ):
        with pytest.raises(InvalidRequest, match="outside the worktree through a symlink"):
            await agent.run(_task(worktree, payload={"script": [action]}), RecordingSink())
    assert sorted(p.name for p in outside.iterdir()) == ["target.txt"]
    assert (outside / "target.txt").read_text() == "keep"
    assert list((worktree / ".git").iterdir()) == []

    # Deleting or renaming a link acts on the link, never on what it points to.
    script = [
        {"rename": ["file-link", "moved-link"]},
        {"delete": "moved-link"},
        {"delete": "dir-link"},
    ]
    outcome = await agent.run(_task(worktree, payload={"script": script}), RecordingSink())
    assert outcome.ok, outcome
    assert (outside / "target.txt").read_text() == "keep"
    assert _names(worktree) == [".git", "git-link"]


async def test_script_timeout_kills_a_running_command_and_its_children(
    tmp_path: Path, worktree: Path
) -> None:
    pid_file = tmp_path / "bg.pid"
    script = [{"run": f"sleep 30 & echo $! > {pid_file}; wait"}]
    started = time.monotonic()
    outcome = await ScriptAgent(grace_s=GRACE_S).run(
        _task(worktree, payload={"script": script}, timeout_s=0.5), RecordingSink()
    )
    assert time.monotonic() - started < 0.5 + 2 * GRACE_S
    assert (outcome.ok, outcome.timed_out, outcome.error) == (
        False,
        True,
        "agent timed out after 0.5s",
    )
    assert _dead(int(pid_file.read_text()))


async def test_script_timeout_interrupts_a_sleep(worktree: Path) -> None:
    script = [{"sleep": 30}, {"write": "never.txt", "content": ""}]
    started = time.monotonic()
    outcome = await ScriptAgent().run(
        _task(worktree, payload={"script": script}, timeout_s=0.2), RecordingSink()
    )
    assert time.monotonic() - started < 2
    assert (outcome.ok, outcome.timed_out, outcome.stopped) == (False, True, False)
    assert not _exists(worktree / "never.txt")


async def test_script_command_that_cannot_start_fails_the_run(worktree: Path) -> None:
    script = [{"run": ["/nonexistent/tool"]}]
    outcome = await ScriptAgent().run(_task(worktree, payload={"script": script}), RecordingSink())
    assert (outcome.ok, outcome.exit_code) == (False, None)
    assert outcome.error is not None
    assert outcome.error.startswith("script action 1 (run) could not start: [Errno 2]")


async def test_script_stop_request_interrupts_a_sleep(worktree: Path) -> None:
    stop = asyncio.Event()
    script = [{"sleep": 30}, {"write": "never.txt", "content": ""}]
    running = asyncio.create_task(
        ScriptAgent().run(_task(worktree, payload={"script": script}, stop=stop), RecordingSink())
    )
    await asyncio.sleep(0.1)
    stop.set()
    outcome = await asyncio.wait_for(running, 2)
    assert (outcome.ok, outcome.stopped, outcome.error) == (False, True, "agent stopped on request")
    assert not (worktree / "never.txt").exists()


# -- adapter_for -------------------------------------------------------------------------------


def test_adapter_for_builds_the_named_adapter() -> None:
    claude = adapter_for("claude-code")
    assert isinstance(claude, CommandAgent)
    assert (claude.template, claude.output_format) == (CLAUDE_CODE_COMMAND, "claude-stream-json")
    command = adapter_for("command", command="my-agent --task {prompt_file}")
    assert isinstance(command, CommandAgent)
    assert command.output_format == "text"
    assert isinstance(adapter_for("script"), ScriptAgent)


@pytest.mark.parametrize(
    ("adapter", "kw", "field"),
    [
        ("nope", {}, "adapter"),
        ("command", {}, "command"),
        ("command", {"command": "x", "output_format": "xml"}, "output_format"),
    ],
)
def test_adapter_for_refuses_bad_configuration(
    adapter: str, kw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        adapter_for(adapter, **kw)
    assert raised.value.field == field


# -- run_process -------------------------------------------------------------------------------


async def test_run_process_delivers_whole_lines_and_waits_for_exit_after_output_closes() -> None:
    chunks: list[str] = []

    async def collect(text: str) -> None:
        chunks.append(text)

    command = "printf 'par'; sleep 0.1; printf 'tial\\nnext'; exec >&-; sleep 0.2; exit 5"
    result = await run_process(command, on_output=collect, timeout_s=5)
    assert (result.returncode, result.timed_out, result.stopped) == (5, False, False)
    assert chunks == ["partial\n", "next"]
    assert result.output_tail == "partial\nnext"
    assert result.duration_s >= 0.3


async def test_run_process_failing_output_handler_stops_the_command_and_raises(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"

    async def explode(text: str) -> None:
        raise RuntimeError(f"cannot record {text!r}")

    command = f"echo $$ > {pid_file}; echo hi; sleep 30"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot record 'hi"):
        await run_process(command, on_output=explode, grace_s=GRACE_S)
    assert time.monotonic() - started < 5
    assert _dead(int(pid_file.read_text()))
