"""The adapter an agent profile names."""

from __future__ import annotations

from collections.abc import Sequence

from stitchwork.errors import ConfigError
from stitchwork.runner.agents import (
    CLAUDE_CODE_COMMAND,
    AgentAdapter,
    CommandAgent,
    OutputFormat,
)
from stitchwork.runner.process import KILL_GRACE_S
from stitchwork.runner.script_agent import ScriptAgent


def adapter_for(
    profile_adapter: str,
    *,
    command: str | Sequence[str] | None = None,
    output_format: OutputFormat | None = None,
    grace_s: float = KILL_GRACE_S,
) -> AgentAdapter:
    """Build the adapter an agent profile names.

    Args:
        profile_adapter: ``"command"`` (needs ``command``), ``"claude-code"`` (``command``
            defaults to ``CLAUDE_CODE_COMMAND``, output is stream-json) or ``"script"``.
        command: The command template, see ``render_command``.
        output_format: For ``"command"``: ``"text"`` (default) or ``"claude-stream-json"``.
        grace_s: Seconds between SIGTERM and SIGKILL when an agent is stopped.

    Returns:
        The adapter.

    Raises:
        ConfigError: Unknown adapter, missing or broken command, or unknown output format.
    """
    if profile_adapter == "script":
        return ScriptAgent(grace_s=grace_s)
    if profile_adapter == "claude-code":
        return CommandAgent(
            command or CLAUDE_CODE_COMMAND,
            output_format=output_format or "claude-stream-json",
            grace_s=grace_s,
        )
    if profile_adapter == "command":
        if not command:
            raise ConfigError("the command adapter needs a command template", field="command")
        return CommandAgent(command, output_format=output_format or "text", grace_s=grace_s)
    raise ConfigError(
        f"unknown agent adapter {profile_adapter!r}; use 'claude-code', 'command' or 'script'",
        field="adapter",
    )
