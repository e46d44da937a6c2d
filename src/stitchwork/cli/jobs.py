"""``stitchwork jobs``: submit, list, show, cancel, retry, watch (through the API)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from stitchwork.cli.client import api_from
from stitchwork.cli.common import load_settings
from stitchwork.cli.output import console, duration, fail, jobs_table, status_text
from stitchwork.cli.watch import watch_job

app = typer.Typer(help="Submit and follow jobs.", no_args_is_help=True)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data))


@app.command()
def submit(
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="Job type: shell, sleep, noop.")],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="Payload as a JSON object.")
    ] = None,
    command: Annotated[
        str | None, typer.Option("--command", "-c", help="Shortcut for a shell job's command.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first (-1000..1000).")] = 0,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before failing.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeat-safe key: the same key returns the same job.")
    ] = None,
    issue_ref: Annotated[str | None, typer.Option(help="Issue this job works on.")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow it until it ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Submit a job, e.g. `stitchwork jobs submit shell -c 'make test' --watch`."""
    body: dict[str, Any] = {}
    if payload:
        try:
            body = json.loads(payload)
        except ValueError as exc:
            fail(f"--payload is not valid JSON: {exc}", code=2)
        if not isinstance(body, dict):
            fail("--payload must be a JSON object, e.g. '{\"seconds\": 2}'", code=2)
    if command is not None:
        body["command"] = command
    request: dict[str, Any] = {"type": type_, "payload": body, "priority": priority}
    for key, value in (
        ("max_attempts", max_attempts),
        ("idempotency_key", idempotency_key),
        ("issue_ref", issue_ref),
    ):
        if value is not None:
            request[key] = value
    api = api_from(load_settings())
    job = api.request("POST", "/jobs", json=request)
    if as_json:
        _print_json(job)
    else:
        console.print(f"submitted {job['type']} job [bold]{job['id']}[/bold] ({job['status']})")
    if watch:
        watch_job(api, job["id"])


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    issue_ref: Annotated[str | None, typer.Option(help="Only jobs for this issue.")] = None,
    limit: Annotated[int, typer.Option(help="Page size (1-200).")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Next-page cursor from a previous list.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON.")] = False,
) -> None:
    """Newest jobs first."""
    params = {
        "status": status,
        "type": type_,
        "issue_ref": issue_ref,
        "limit": limit,
        "cursor": cursor,
    }
    page = api_from(load_settings()).request(
        "GET", "/jobs", params={k: v for k, v in params.items() if v is not None}
    )
    if as_json:
        _print_json(page)
        return
    console.print(jobs_table(page["items"]))
    if page["next_cursor"]:
        console.print(f"more: --cursor {page['next_cursor']}", style="dim")


@app.command()
def show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print job and events as JSON.")] = False,
) -> None:
    """A job's details and its events."""
    api = api_from(load_settings())
    job = api.request("GET", f"/jobs/{job_id}")
    events = api.request("GET", f"/jobs/{job_id}/events")
    if as_json:
        _print_json({"job": job, "events": events})
        return
    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    for label, value in (
        ("id", job["id"]),
        ("type", job["type"]),
        ("status", status_text(job["status"])),
        ("attempt", f"{job['attempt']} of {job['max_attempts']}"),
        ("progress", f"{job['progress_percent']}%"),
        ("queue", job["queue"]),
        ("duration", duration(job)),
        ("issue", job["issue_ref"] or ""),
        ("error", job["error"] or ""),
    ):
        details.add_row(label, value)
    console.print(details)
    if job["result"]:
        console.print("[bold]result[/bold]")
        _print_json(job["result"])
    timeline = Table(show_edge=False, header_style="bold", title="events")
    for column in ("seq", "time", "type", "actor", "details"):
        timeline.add_column(column)
    for e in events:
        extra = {k: v for k, v in e["payload"].items() if k not in {"status"} and v is not None}
        timeline.add_row(
            str(e["seq"]), e["created_at"][11:23], e["type"], e["actor"], json.dumps(extra)[:80]
        )
    console.print(timeline)


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job; a running one is told to stop."""
    job = api_from(load_settings()).request("POST", f"/jobs/{job_id}/cancel")
    console.print(f"job {job['id']} is {job['status']}")


@app.command()
def retry(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Queue a failed or cancelled job again."""
    job = api_from(load_settings()).request("POST", f"/jobs/{job_id}/retry")
    console.print(f"job {job['id']} is {job['status']} (attempt {job['attempt']})")


@app.command()
def watch(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Follow a job's steps and output live until it ends (resumes if the connection drops).
    Exit code 0 if it completed, 1 otherwise."""
    watch_job(api_from(load_settings()), job_id)
