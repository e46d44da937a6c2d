"""Shared pieces of the ``stitchwork plan`` CLI tests: an in-process CLI with a fixed
environment, plan fixtures and output helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from stitchwork.cli.main import app

FIXTURE = Path(__file__).parents[1] / "fixtures" / "milestones.md"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Variables a developer's shell may set that would point these tests elsewhere.
UNSET = [name for name in os.environ if name.startswith("STITCHWORK_")]

CYCLE = {
    "nodes": [
        {"id": "lint"},
        {"id": "build", "depends_on": ["lint", "test"]},
        {"id": "test", "depends_on": ["build"]},
    ]
}
CHAIN = """\
name: three steps
concurrency: 2
nodes:
  - {id: fetch, type: noop}
  - {id: build, type: noop, depends_on: [fetch]}
  - {id: ship, type: noop, depends_on: [fetch, build]}
"""


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone, for phrase assertions."""
    return " ".join(text.split())


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cli:
    """``stitchwork`` in-process with a fixed environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env: dict[str, str | None] = {**dict.fromkeys(UNSET), "COLUMNS": "200", **env}
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(app, list(args), env=self.env, input=input)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == 0, f"stitchwork {' '.join(args)}: {result.output}"
        return result.output

    async def run(self, *args: str) -> Result:
        """In a thread, so that the server in this test's event loop can answer."""
        return await asyncio.to_thread(self, *args)


def write(tmp_path: Path, name: str, content: str | dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# -- plan validate ------------------------------------------------------------------------------
