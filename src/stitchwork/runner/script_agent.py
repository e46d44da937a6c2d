"""The built-in ``script`` agent: applies a deterministic script from the job payload.

It stands in for a coding agent in the demo, the tests and the benchmarks: it edits files and
runs commands in the worktree, and reports each action the way a real agent reports its tool
calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from stitchwork.domain.scripts import action_kind, parse_script
from stitchwork.errors import InvalidRequest
from stitchwork.runner.agents import AgentOutcome, AgentSink, AgentTask
from stitchwork.runner.claude_stream import summarize_input
from stitchwork.runner.process import KILL_GRACE_S, ProcessStartError, run_process


class ScriptAgent:
    """A deterministic built-in agent that applies ``task.payload["script"]`` in the worktree.

    The payload holds ``script``, a list of actions, and optionally ``on_attempt``, a mapping
    from an attempt number (as a string) to the actions that replace ``script`` on that attempt,
    so that a test can make attempt 1 break a gate and attempt 2 fix it::

        {"script": [{"write": "a.py", "content": "x = 1\\n"}, {"run": "python a.py"}],
         "on_attempt": {"2": [{"delete": "a.py"}]}}

    Actions: ``{"write": path, "content": str}``, ``{"append": path, "content": str}``,
    ``{"delete": path}`` (a file, link or directory), ``{"rename": [from, to]}``,
    ``{"run": command}`` (a string goes through ``/bin/sh -c``; a failing command fails the run),
    ``{"sleep": seconds}`` and ``{"tokens": [input, output]}`` (reported as token usage).
    Paths are relative to the worktree and must stay inside it: absolute paths, ``..``, paths
    into ``.git`` and paths that leave through a symlink are refused with ``InvalidRequest``;
    the script's shape is checked before any action runs. Each action is reported like an agent's
    tool call: one ``tool_called`` (name = the action's kind) and a line of output.
    """

    def __init__(self, *, grace_s: float = KILL_GRACE_S) -> None:
        self.grace_s = grace_s

    async def run(self, task: AgentTask, sink: AgentSink) -> AgentOutcome:
        """Apply the script for ``task.attempt``; see ``AgentAdapter``."""
        actions = parse_script(task.payload, task.attempt)
        tokens = [0, 0]
        try:
            async with asyncio.timeout(task.timeout_s):
                for index, action in enumerate(actions, 1):
                    if task.stop is not None and task.stop.is_set():
                        raise _ScriptEnded("agent stopped on request", stopped=True)
                    await self._step(index, action, len(actions), task, sink, tokens)
        except TimeoutError:
            end = _ScriptEnded(f"agent timed out after {task.timeout_s:g}s", timed_out=True)
        except _ScriptEnded as exc:
            end = exc
        else:
            return AgentOutcome(
                ok=True,
                exit_code=0,
                summary=f"applied {len(actions)} script actions (attempt {task.attempt})",
                tokens_input=tokens[0],
                tokens_output=tokens[1],
            )
        return AgentOutcome(
            ok=False,
            exit_code=end.exit_code,
            timed_out=end.timed_out,
            stopped=end.stopped,
            error=end.error,
            tokens_input=tokens[0],
            tokens_output=tokens[1],
        )

    async def _step(
        self,
        index: int,
        action: dict[str, Any],
        count: int,
        task: AgentTask,
        sink: AgentSink,
        tokens: list[int],
    ) -> None:
        kind = action_kind(action)
        call_id = f"script-{task.attempt}-{index}"
        await sink.tool_called(kind, {"id": call_id, "input": summarize_input(action)})
        await sink.output(f"[{index}/{count}] {_describe(kind, action)}\n")
        value = action[kind]
        if kind == "run":
            try:
                run = await run_process(
                    value,
                    cwd=task.worktree,
                    env=task.process_env(),
                    on_output=sink.output,
                    grace_s=self.grace_s,
                    stop=task.stop,
                    tail_chars=0,
                    wrap=task.wrap(),
                )
            except ProcessStartError as exc:
                raise _ScriptEnded(
                    f"script action {index} (run) could not start: {exc.cause}"
                ) from exc
            if run.stopped:
                raise _ScriptEnded("agent stopped on request", stopped=True)
            if run.returncode != 0:
                error = f"script action {index} (run) exited with code {run.returncode}"
                raise _ScriptEnded(error, exit_code=run.returncode)
        elif kind == "sleep":
            stop = task.stop or asyncio.Event()  # one that is never set: a plain sleep
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), float(value))
                raise _ScriptEnded("agent stopped on request", stopped=True)
        elif kind == "tokens":
            tokens[0] += value[0]
            tokens[1] += value[1]
            await sink.tokens(value[0], value[1])
        else:
            try:
                # In a thread: deleting a big directory must not stall the worker's other jobs.
                await asyncio.to_thread(_apply_file_action, task.worktree, index, kind, action)
            except OSError as exc:
                raise _ScriptEnded(f"script action {index} ({kind}) failed: {exc}") from exc


class _ScriptEnded(Exception):
    """Ends a script run early with a failed outcome (internal to ``ScriptAgent``)."""

    def __init__(
        self,
        error: str,
        *,
        exit_code: int | None = None,
        stopped: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.exit_code = exit_code
        self.stopped = stopped
        self.timed_out = timed_out


def _inside(root: Path, raw: str, index: int, *, follow: bool) -> Path:
    """``raw`` under ``root``, refusing a path that leaves it through a symlink.

    ``follow``: the action writes through a symlink at the path itself (write, append), so its
    target must be inside too; delete and rename act on the link, not on what it points to.
    """
    target = root.joinpath(*PurePosixPath(raw).parts)
    final = target.parent.resolve() / target.name
    checked = final.resolve() if follow else final
    if not checked.is_relative_to(root) or checked.relative_to(root).parts[:1] == (".git",):
        raise InvalidRequest(
            f"script action {index}: path {raw!r} is refused: it leads outside the worktree "
            "through a symlink",
            field="script",
            action=index,
        )
    return final


def _apply_file_action(worktree: Path, index: int, kind: str, action: dict[str, Any]) -> None:
    """Apply a write, append, delete or rename."""
    root = worktree.resolve()
    if kind in ("write", "append"):
        path = _inside(root, action[kind], index, follow=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w" if kind == "write" else "a", encoding="utf-8") as fh:
            fh.write(action["content"])
    elif kind == "delete":
        path = _inside(root, action["delete"], index, follow=False)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    else:
        source = _inside(root, action["rename"][0], index, follow=False)
        dest = _inside(root, action["rename"][1], index, follow=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)


def _describe(kind: str, action: dict[str, Any]) -> str:
    value = action[kind]
    if kind in ("write", "append"):
        return f"{kind} {value} ({len(action['content'])} chars)"
    if kind == "rename":
        return f"rename {value[0]} -> {value[1]}"
    if kind == "run":
        return f"run $ {value if isinstance(value, str) else shlex.join(value)}"
    if kind == "sleep":
        return f"sleep {value:g}s"
    if kind == "tokens":
        return f"tokens {value[0]} in, {value[1]} out"
    return f"{kind} {value}"
