"""``stitchwork plan``: validate and preview plans locally; run, follow and control executions
through the API."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from stitchwork.cli.client import api_from
from stitchwork.cli.common import load_settings
from stitchwork.cli.output import console, fail, parse_time
from stitchwork.cli.plan_view import ExecutionView, styled, watch_execution
from stitchwork.errors import CycleError, InvalidRequest

if TYPE_CHECKING:
    from stitchwork.domain.plans import Plan

app = typer.Typer(
    help="Plans (DAGs of jobs with claims) and their executions.", no_args_is_help=True
)


class PlanFormat(StrEnum):
    JSON = "json"
    YAML = "yaml"
    MARKDOWN = "markdown"


class DispatchMode(StrEnum):
    JOBS = "jobs"
    PULL = "pull"


SUFFIX_FORMATS = {
    ".json": PlanFormat.JSON,
    ".yaml": PlanFormat.YAML,
    ".yml": PlanFormat.YAML,
    ".md": PlanFormat.MARKDOWN,
    ".markdown": PlanFormat.MARKDOWN,
}

FileArg = Annotated[
    Path,
    typer.Argument(
        metavar="FILE", help="Plan as JSON, YAML or a Markdown milestone table ('-': stdin)."
    ),
]
FormatOpt = Annotated[
    PlanFormat | None,
    typer.Option(
        "--format", "-f", help="Plan format (default: from the file's suffix, else detected)."
    ),
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Execution id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data))


def shown_name(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def read_plan(path: Path, fmt: PlanFormat | None) -> tuple[str, PlanFormat | None, Plan]:
    """The file's text, its format (as given, else from the suffix, else None: detected) and
    the validated plan. Unreadable files and invalid plans end the command with exit code 2."""
    stdin = str(path) == "-"
    name = shown_name(path)
    try:
        text = sys.stdin.read() if stdin else path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"plan file {path} does not exist", code=2)
    except IsADirectoryError:
        fail(f"{path} is a directory, not a plan file", code=2)
    except UnicodeDecodeError:
        fail(f"plan file {path} is not UTF-8 text", code=2)
    except OSError as exc:
        fail(f"cannot read plan file {path}: {exc.strerror or exc}", code=2)
    fmt = fmt or (None if stdin else SUFFIX_FORMATS.get(path.suffix.lower()))
    from stitchwork.domain.plans import parse_plan  # here: YAML and claims load only when used

    try:
        plan = parse_plan(text, format=fmt.value if fmt else None)
    except CycleError as exc:
        fail(f"invalid plan {name}: dependency cycle {' -> '.join(exc.cycle)}", code=2)
    except InvalidRequest as exc:
        where = f" (at {exc.field})" if exc.field and exc.field != "body" else ""
        fail(f"invalid plan {name}{where}: {exc.message}", code=2)
    return text, fmt, plan


def _details(rows: list[tuple[str, Any]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _chain(ids: list[str]) -> str:
    return " → ".join(ids)


@app.command()
def validate(file: FileArg, format_: FormatOpt = None) -> None:
    """Check a plan without running it; print its shape and critical path.

    Checks ids, edges, cycles, claims and limits. An invalid plan exits with code 2 and names
    the place of the problem (``nodes[3].claims[0]``) or the cycle.
    """
    _, fmt, plan = read_plan(file, format_)
    from stitchwork.domain.dag import critical_path

    roots = [node.id for node in plan.nodes if not plan.dependencies(node.id)]
    path = critical_path(plan)
    console.print(f"plan {shown_name(file)} is valid ({fmt.value if fmt else 'format detected'})")
    console.print(
        _details(
            [
                ("name", plan.name or ""),
                ("nodes", str(len(plan.nodes))),
                ("edges", str(len(plan.edges))),
                ("concurrency", str(plan.concurrency)),
                ("failure policy", plan.failure_policy.value),
                ("repo", plan.repo or ""),
                ("roots", ", ".join(roots)),
                ("critical path", f"{len(path)} nodes: {_chain(path)}"),
            ]
        )
    )


@app.command()
def waves(
    file: FileArg,
    agents: Annotated[
        int | None,
        typer.Option(min=1, help="Agents working at once (default: the plan's concurrency)."),
    ] = None,
    repo: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            exists=True,
            file_okay=False,
            help="Checkout whose tree decides which literal claims are directories "
            "(lib/v1.2 existing as a directory covers lib/v1.2/x.py), as the scheduler does "
            "for an execution on it (default: the plan's repo, if it is an existing "
            "absolute path; else the naming rule alone).",
        ),
    ] = None,
    format_: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Preview a schedule: the waves of nodes that can run together, and the critical path.

    A node is in a later wave than all its dependencies; a wave holds at most ``--agents``
    nodes (and no more than the plan's concurrency), none of them with conflicting claims.
    """
    _, _, plan = read_plan(file, format_)
    from stitchwork.domain.claims import repo_root_of
    from stitchwork.services.executions import plan_waves

    width = agents or plan.concurrency
    root = repo.resolve() if repo is not None else repo_root_of(plan.repo)
    try:
        preview = plan_waves(plan, width, repo_root=root)
    except InvalidRequest as exc:
        fail(exc.message, code=2)
    if as_json:
        _print_json(
            {
                "name": plan.name,
                "agents": width,
                "concurrency": plan.concurrency,
                "repo_root": str(root) if root is not None else None,
                "waves": preview.waves,
                "critical_path": preview.critical_path,
                "critical_path_length": preview.critical_path_length,
            }
        )
        return
    name = f"{plan.name}: " if plan.name else ""
    console.print(
        f"{name}{len(plan.nodes)} nodes in {len(preview.waves)} waves with {width} agents "
        f"(plan concurrency {plan.concurrency})",
        highlight=False,
    )
    if root is not None:
        console.print(f"claims classified by the tree of {root}", style="dim", highlight=False)
    table = Table(show_edge=False, header_style="bold")
    for column in ("wave", "node", "title", "depends on"):
        table.add_column(column, overflow="fold")
    for number, wave in enumerate(preview.waves, start=1):
        for i, node_id in enumerate(wave):
            node = plan.node(node_id)
            table.add_row(
                str(number) if i == 0 else "",
                node_id,
                node.title,
                ", ".join(plan.dependencies(node_id)),
                end_section=i == len(wave) - 1,
            )
    console.print(table)
    console.print(
        f"critical path ({preview.critical_path_length} nodes): {_chain(preview.critical_path)}",
        highlight=False,
    )


@app.command("run")
def run_plan(
    file: FileArg,
    format_: FormatOpt = None,
    dispatch: Annotated[
        DispatchMode,
        typer.Option(help="jobs: the server runs each node as a job; pull: agents take nodes."),
    ] = DispatchMode.JOBS,
    repo: Annotated[
        str | None,
        typer.Option(
            help="Repository whose locks the nodes' claims take; an existing local path is "
            "made absolute and is where agent-task nodes run."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Nodes run at once (overrides the plan's).")
    ] = None,
    no_watch: Annotated[
        bool, typer.Option("--no-watch", help="Start it and return; do not follow it.")
    ] = False,
) -> None:
    """Upload a plan as an execution, start it and follow it live.

    The plan is validated here first, so an invalid one never reaches the server (exit code
    2). Exit code 0 if the execution completed, 1 if it failed or was aborted.
    """
    text, fmt, _ = read_plan(file, format_)  # an invalid plan never reaches the server
    if repo is not None and Path(repo).is_dir():
        repo = str(Path(repo).resolve())
    params: dict[str, Any] = {"dispatch": dispatch.value, "start": "true"}
    for key, value in (("format", fmt.value if fmt else None), ("repo", repo)):
        if value is not None:
            params[key] = value
    if concurrency is not None:
        params["concurrency"] = concurrency
    api = api_from(load_settings())
    execution = api.request(
        "POST",
        "/executions/import",
        params=params,
        content=text.encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    ex_id = execution["id"]
    console.print(
        f"execution [bold]{ex_id}[/bold] {execution['status']}: "
        f"{len(execution.get('nodes', []))} nodes, dispatch {execution['dispatch']}, "
        f"repo {execution['repo']}, concurrency {execution['concurrency']}",
        highlight=False,
    )
    if no_watch:
        console.print(f"follow it with `stitchwork plan watch {ex_id}`", style="dim")
        return
    watch_execution(api, ex_id)


@app.command()
def watch(execution_id: IdArg) -> None:
    """Follow an execution's nodes live until it ends.

    Resumes where it stopped if the connection drops. Exit code 0 if the execution completed,
    1 if it failed or was aborted. Ctrl+C stops watching, not the execution.
    """
    watch_execution(api_from(load_settings()), execution_id)


def _control(execution_id: str, action: str) -> None:
    ex = api_from(load_settings()).request("POST", f"/executions/{execution_id}/{action}")
    console.print(f"execution {ex['id']} is {ex['status']}", highlight=False)


@app.command()
def pause(execution_id: IdArg) -> None:
    """Start no more nodes; running nodes finish."""
    _control(execution_id, "pause")


@app.command()
def resume(execution_id: IdArg) -> None:
    """Start nodes again after a pause (or a deadlock)."""
    _control(execution_id, "resume")


@app.command()
def abort(execution_id: IdArg) -> None:
    """Stop an execution: cancel running jobs, release locks, cancel the nodes not done."""
    _control(execution_id, "abort")


def _when(value: str | None) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _progress(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return ""
    text = f"{counts.get('completed', 0)}/{total}"
    others = [f"{counts[s]} {s}" for s in ("running", "failed") if counts.get(s)]
    return f"{text} ({', '.join(others)})" if others else text


@app.command("list")
def list_executions(
    status: Annotated[str | None, typer.Option(help="Only executions in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Newest executions first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    page = api_from(load_settings()).request("GET", "/executions", params=params)
    if as_json:
        _print_json(page)
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "name", "status", "nodes done", "dispatch", "repo", "created"):
        table.add_column(column)
    for ex in page["items"]:
        table.add_row(
            ex["id"],
            ex.get("name") or "",
            styled(ex["status"]),
            _progress(ex.get("counts") or {}),
            ex["dispatch"],
            ex["repo"],
            _when(ex.get("created_at")),
        )
    console.print(table)


@app.command()
def show(execution_id: IdArg, as_json: JsonOpt = False) -> None:
    """An execution's details and its nodes."""
    ex = api_from(load_settings()).request("GET", f"/executions/{execution_id}")
    if as_json:
        _print_json(ex)
        return
    view = ExecutionView(ex)
    console.print(
        _details(
            [
                ("id", ex["id"]),
                ("name", ex.get("name") or ""),
                ("status", styled(ex["status"])),
                ("progress", view.progress()),
                ("dispatch", ex["dispatch"]),
                ("repo", ex["repo"]),
                ("failure policy", ex.get("failure_policy") or ""),
                ("concurrency", f"{ex['concurrency']} (peak {ex.get('peak_concurrency', 0)})"),
                ("created", _when(ex.get("created_at"))),
                ("started", _when(ex.get("started_at"))),
                ("ended", _when(ex.get("completed_at"))),
            ]
        )
    )
    console.print(view.table(dependencies=True))
