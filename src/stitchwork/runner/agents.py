"""Agent adapters: how a worker asks a coding agent to work on a task in a worktree.

Every adapter implements ``AgentAdapter.run(task, sink)``: it works in ``task.worktree``,
reports what happens through the ``AgentSink`` (output text, tool calls, tokens) while it
happens, and returns an ``AgentOutcome``. A failing, timed-out or stopped agent is an outcome,
not an exception; exceptions mean the adapter could not be used as configured. Cancelling the
task running ``run`` stops the agent's whole process group before ``CancelledError`` propagates.

* ``CommandAgent`` runs any CLI agent from a command template (Claude Code, aider, a script).
* ``ScriptAgent`` (``runner.script_agent``) applies a deterministic script from the job
  payload (demo, tests, benchmarks); ``runner.adapters.adapter_for`` picks one for a profile.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from stitchwork.errors import ConfigError
from stitchwork.runner.claude_stream import (
    ClaudeStreamParser,
    FinalResult,
    StreamItem,
    TextOutput,
    TokenUsage,
    ToolCall,
)
from stitchwork.runner.process import (
    KILL_GRACE_S,
    OutputTail,
    ProcessResult,
    ProcessStartError,
    run_process,
)
from stitchwork.runner.sandbox import clean_env

OutputFormat = Literal["text", "claude-stream-json"]
# Given extra readable paths, the ``wrap`` that starts a command in the task's sandbox.
Confine = Callable[[tuple[Path, ...]], Callable[[list[str]], list[str]] | None]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "claude-stream-json")
SUMMARY_CHARS = 2_000
# A one-shot, non-interactive Claude Code run. Permission flags (which tools it may use without
# asking) are the agent profile's decision, so a profile adds them with its own template.
CLAUDE_CODE_COMMAND = ("claude", "-p", "{prompt}", "--output-format", "stream-json", "--verbose")
_PLACEHOLDER = re.compile(r"\{(prompt|prompt_file|worktree|issue_ref)\}")


@dataclass(frozen=True)
class AgentTask:
    """What an agent is asked to do, and where.

    Attributes:
        prompt: The instructions.
        worktree: The checkout the agent works in (its working directory).
        issue_ref: The issue being worked on (``"owner/repo#12"``), if any.
        attempt: 1 for the first attempt, 2 after the first retry, ...
        payload: The job's payload, for adapters that read settings from it.
        timeout_s: Seconds the agent may run before it is stopped.
        env: The agent's complete environment (``None``: a clean base, see ``clean_env``).
        stop: Setting it stops the agent (the outcome then has ``stopped=True``).
        confine: Given paths the command must also be able to read, the ``wrap`` of
            ``run_process`` that starts it in the task's sandbox (``None``: unconfined).
    """

    prompt: str
    worktree: Path
    issue_ref: str | None = None
    attempt: int = 1
    payload: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 3_600.0
    env: Mapping[str, str] | None = None
    stop: asyncio.Event | None = field(default=None, compare=False)
    confine: Confine | None = field(default=None, compare=False)

    def process_env(self) -> dict[str, str]:
        """The complete environment of the agent's commands (never the server's own)."""
        if self.env is not None:
            return dict(self.env)
        return clean_env(home=tempfile.gettempdir())

    def wrap(self, *readable: Path) -> Callable[[list[str]], list[str]] | None:
        """How to start a command of this task (in its sandbox), with ``readable`` paths
        visible too (the prompt file); ``None`` runs it as it is."""
        return self.confine(readable) if self.confine is not None else None


@dataclass(frozen=True)
class AgentOutcome:
    """How an agent run ended.

    Attributes:
        ok: The agent finished its work: exit status 0, no timeout or stop, no reported error.
        exit_code: The agent's exit status; ``None`` if it never started or was not a process.
        timed_out: The timeout stopped it.
        stopped: A stop request stopped it.
        summary: The agent's closing words: its final result, else the tail of its output.
        error: Why ``ok`` is false, in one sentence.
        tokens_input: Input tokens reported during the run (the sum of the sink's increases).
        tokens_output: Output tokens reported during the run.
    """

    ok: bool
    exit_code: int | None
    timed_out: bool = False
    stopped: bool = False
    summary: str = ""
    error: str | None = None
    tokens_input: int = 0
    tokens_output: int = 0


class AgentSink(Protocol):
    """Where an adapter reports a run as it happens (the runner records these as events)."""

    async def output(self, text: str) -> None:
        """Human-readable output (``step.output``)."""
        ...

    async def tool_called(self, name: str, summary: dict[str, Any]) -> None:
        """A tool call, ``summary`` = ``{"id": ..., "input": <truncated>}`` (``ai.tool_called``)."""
        ...

    async def tokens(self, tokens_input: int, tokens_output: int) -> None:
        """Tokens used since the previous call: an increase, not a total (``ai.tokens_used``)."""
        ...


class AgentAdapter(Protocol):
    """Runs one agent task to its end."""

    async def run(self, task: AgentTask, sink: AgentSink) -> AgentOutcome:
        """Run ``task``, reporting through ``sink``; see the module docstring for the rules."""
        ...


def render_command(template: str | Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Fill ``{prompt}``, ``{prompt_file}``, ``{worktree}`` and ``{issue_ref}`` into a template.

    A string template is first split like a shell would split it (``shlex``), and only then are
    the placeholders replaced inside each word, so a value is always part of one argument, however
    many spaces, quotes, newlines or ``;`` it holds. Nothing is ever run through a shell. Values
    are inserted in one pass and never scanned again, so a prompt containing ``{worktree}`` stays
    as written. Other braces (JSON in an argument) are left alone.

    Args:
        template: A command line (``"claude -p {prompt}"``) or its argument list.
        values: The placeholder values, by name without braces.

    Returns:
        The argument list.

    Raises:
        ConfigError: The template is empty or not valid shell-like syntax.
    """
    try:
        words = shlex.split(template) if isinstance(template, str) else list(template)
    except ValueError as exc:  # unbalanced quotes
        raise ConfigError(f"invalid agent command template: {exc}", field="command") from exc
    if not words:
        raise ConfigError("the agent command template is empty", field="command")
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), word) for word in words]


class CommandAgent:
    """An agent run as a command in the worktree, from a template (see ``render_command``).

    With ``output_format="claude-stream-json"`` the command's output is parsed as Claude Code
    stream-json (``runner.claude_stream``): text, tool calls and token usage become sink calls.
    With ``"text"`` the output is passed on as it is and no tokens are known.

    The prompt is also written to ``{prompt_file}``, in a temporary directory outside the
    worktree (so it can never be committed) that is removed when the run ends.
    """

    def __init__(
        self,
        template: str | Sequence[str],
        *,
        output_format: OutputFormat = "text",
        grace_s: float = KILL_GRACE_S,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ConfigError(
                f"unknown agent output format {output_format!r}; use one of {OUTPUT_FORMATS}",
                field="output_format",
            )
        render_command(template, {})  # fail on a broken template now, not at the first job
        self.template = template
        self.output_format = output_format
        self.grace_s = grace_s

    async def run(self, task: AgentTask, sink: AgentSink) -> AgentOutcome:
        """Run the command for ``task``; see ``AgentAdapter``."""
        reader = _StreamReader(sink) if self.output_format == "claude-stream-json" else None
        tail = OutputTail(SUMMARY_CHARS)

        async def on_output(text: str) -> None:
            if reader is not None:
                await reader.feed(text, tail)
            else:
                tail.add(text)
                await sink.output(text)

        with tempfile.TemporaryDirectory(prefix="stitchwork-agent-") as scratch:
            prompt_file = Path(scratch) / "prompt.md"
            await asyncio.to_thread(prompt_file.write_text, task.prompt, encoding="utf-8")
            argv = render_command(
                self.template,
                {
                    "prompt": task.prompt,
                    "prompt_file": str(prompt_file),
                    "worktree": str(task.worktree),
                    "issue_ref": task.issue_ref or "",
                },
            )
            try:
                run = await run_process(
                    argv,
                    cwd=task.worktree,
                    env=task.process_env(),
                    on_output=on_output,
                    timeout_s=task.timeout_s,
                    grace_s=self.grace_s,
                    stop=task.stop,
                    tail_chars=0,
                    wrap=task.wrap(Path(scratch)),
                )
            except ProcessStartError as exc:
                return AgentOutcome(
                    ok=False, exit_code=None, error=f"could not start agent: {exc.cause}"
                )
        if reader is not None:
            await reader.close(tail)
        return _command_outcome(run, task, tail, reader)


class _StreamReader:
    """Feeds stream-json output to the parser and its items to the sink."""

    def __init__(self, sink: AgentSink) -> None:
        self.sink = sink
        self.parser = ClaudeStreamParser()

    async def feed(self, text: str, tail: OutputTail) -> None:
        await self._send(self.parser.feed(text), tail)

    async def close(self, tail: OutputTail) -> None:
        await self._send(self.parser.close(), tail)

    async def _send(self, items: list[StreamItem], tail: OutputTail) -> None:
        for item in items:
            if isinstance(item, TextOutput):
                tail.add(item.text)
                await self.sink.output(item.text)
            elif isinstance(item, ToolCall):
                await self.sink.tool_called(item.name, item.summary)
            elif isinstance(item, TokenUsage):
                await self.sink.tokens(item.tokens_input, item.tokens_output)
            elif isinstance(item, FinalResult):
                pass  # kept by the parser as ``parser.result``


def _command_outcome(
    run: ProcessResult, task: AgentTask, tail: OutputTail, reader: _StreamReader | None
) -> AgentOutcome:
    result = reader.parser.result if reader is not None else None
    error: str | None = None
    if run.timed_out:
        error = f"agent timed out after {task.timeout_s:g}s"
    elif run.stopped:
        error = "agent stopped on request"
    elif run.returncode != 0:
        error = f"agent exited with code {run.returncode}"
    elif result is not None and result.is_error:
        error = f"agent reported an error ({result.subtype})"
    summary = result.text if result is not None and result.text.strip() else tail.text()
    return AgentOutcome(
        ok=error is None,
        exit_code=run.returncode,
        timed_out=run.timed_out,
        stopped=run.stopped,
        summary=summary.strip()[-SUMMARY_CHARS:],
        error=error,
        tokens_input=reader.parser.tokens_input if reader is not None else 0,
        tokens_output=reader.parser.tokens_output if reader is not None else 0,
    )
