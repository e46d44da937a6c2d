"""``stitchwork events tail``: the workspace's events as they happen."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from stitchwork.cli.client import api_from
from stitchwork.cli.common import load_settings
from stitchwork.cli.follow import follow
from stitchwork.cli.output import console, err_console

app = typer.Typer(help="Follow events.", no_args_is_help=True)

TYPE_STYLE = {"job": "cyan", "step": "blue", "ai": "magenta", "gate": "yellow"}


def _summary(payload: dict[str, Any]) -> str:
    if "chunk" in payload:
        return str(payload["chunk"]).rstrip("\n").replace("\n", " ⏎ ")[:100]
    keep = {k: v for k, v in payload.items() if k not in {"step_id", "ordinal"} and v is not None}
    return json.dumps(keep)[:100]


@app.command()
def tail(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's events.")] = None,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Event type or glob, e.g. 'step.*' (repeatable)."),
    ] = None,
    since: Annotated[
        int, typer.Option(help="Start after this event id (0: replay everything).")
    ] = -1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Print events as they arrive, until Ctrl+C. By default only new ones; reconnects (and
    resumes where it stopped) if the connection drops."""
    api = api_from(load_settings())
    params: dict[str, Any] = {"type": type_ or []}
    if job:
        params["job_id"] = job
    last_id = str(since) if since >= 0 else ""
    if not last_id:
        params["last_event_id"] = "latest"  # only events from now on
    try:
        for event in follow(
            api,
            "/events/stream",
            params=params,
            last_id=last_id,
            on_reconnect=lambda message: err_console.print(message, style="yellow"),
        ):
            if as_json:
                console.print(json.dumps(event.data), soft_wrap=True, markup=False)
                console.file.flush()
                continue
            data = event.data
            family = data["type"].split(".")[0]
            console.print(
                Text.assemble(
                    (data["created_at"][11:23] + " ", "dim"),
                    (str(data["job_id"])[:8] + " ", ""),
                    (f"{data['seq']:>5} ", "dim"),
                    (f"{data['type']:<16} ", TYPE_STYLE.get(family, "")),
                    _summary(data["payload"]),
                ),
                soft_wrap=True,
            )
            console.file.flush()  # a pipe or file sees each event at once
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
