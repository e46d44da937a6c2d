"""Rendering helpers shared by the CLI commands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

STATUS_STYLE = {
    "pending": "dim",
    "queued": "cyan",
    "running": "blue",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def duration(job: dict[str, Any]) -> str:
    start = parse_time(job.get("started_at"))
    if start is None:
        return ""
    end = parse_time(job.get("completed_at")) or datetime.now(UTC)
    return f"{(end - start).total_seconds():.1f}s"


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "type", "status", "attempt", "progress", "duration", "created"):
        table.add_column(column)
    for job in jobs:
        created = parse_time(job["created_at"])
        table.add_row(
            job["id"],
            job["type"],
            status_text(job["status"]),
            f"{job['attempt']}/{job['max_attempts']}",
            f"{job['progress_percent']}%",
            duration(job),
            created.strftime("%Y-%m-%d %H:%M:%S") if created else "",
        )
    return table
