"""``stitchwork queues``: depth, pause and resume (through the API)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from stitchwork.cli.client import api_from
from stitchwork.cli.common import load_settings
from stitchwork.cli.output import console

app = typer.Typer(help="Queues: depth, pause, resume.", no_args_is_help=True)


def _table(queues: list[dict[str, object]]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("queue", "state", "queued", "running"):
        table.add_column(column)
    for q in queues:
        table.add_row(
            str(q["name"]),
            "paused" if q["paused"] else "active",
            str(q["queued"]),
            str(q["running"]),
        )
    return table


@app.command("list")
def list_queues() -> None:
    """Each queue with its state and how many jobs wait and run."""
    console.print(_table(api_from(load_settings()).request("GET", "/queues")))


@app.command()
def pause(name: Annotated[str, typer.Argument(help="Queue name.")] = "default") -> None:
    """Stop workers taking new jobs from a queue (running jobs go on)."""
    console.print(_table([api_from(load_settings()).request("POST", f"/queues/{name}/pause")]))


@app.command()
def resume(name: Annotated[str, typer.Argument(help="Queue name.")] = "default") -> None:
    """Let workers take jobs from a paused queue again."""
    console.print(_table([api_from(load_settings()).request("POST", f"/queues/{name}/resume")]))
