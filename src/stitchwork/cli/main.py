"""``stitchwork``: serve, worker, db, keys, jobs, queues, events, plan, chat, gc, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stitchwork import __version__
from stitchwork.cli import chat as chat_cmd
from stitchwork.cli import events as events_cmd
from stitchwork.cli import jobs as jobs_cmd
from stitchwork.cli import plan as plan_cmd
from stitchwork.cli import queues as queues_cmd
from stitchwork.cli.common import load_settings, run
from stitchwork.cli.logs import configure_logging
from stitchwork.cli.output import console, fail

app = typer.Typer(
    name="stitchwork",
    help="Job orchestrator for coding agents. Configure with STITCHWORK_* environment "
    "variables (see README); the default runs on SQLite in your user data directory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys (stored hashed; a new key is shown once).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(queues_cmd.app, name="queues")
app.add_typer(events_cmd.app, name="events")
app.add_typer(plan_cmd.app, name="plan")
app.command("chat")(chat_cmd.chat)


def _version(value: bool) -> None:
    if value:
        console.print(f"stitchwork {__version__}")
        raise typer.Exit


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Job orchestrator for coding agents."""


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8420).")] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="API only; run workers separately.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
) -> None:
    """Run the API, a worker and the lease sweeper in one process.

    On first start it creates the 'default' workspace and an admin API key, stores the key for
    the CLI and prints how to use it. Stop with Ctrl+C or SIGTERM: running jobs get
    STITCHWORK_SHUTDOWN_GRACE to finish, then go back to the queue.
    """
    settings = load_settings(api_host=host, api_port=port, worker_concurrency=concurrency)
    configure_logging(settings.log_level)
    from stitchwork.cli import ops

    run(ops.serve(settings, with_worker=not no_worker))


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (repeatable).")
    ] = None,
) -> None:
    """Run a worker (and a lease sweeper) without the API, until SIGTERM/SIGINT."""
    settings = load_settings(worker_concurrency=concurrency)
    configure_logging(settings.log_level)
    from stitchwork.cli import ops

    run(ops.worker(settings, queue or None))


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply schema migrations (safe to run repeatedly and from several hosts)."""
    settings = load_settings()
    from stitchwork.cli import ops

    current = run(ops.db_upgrade(settings, revision))
    console.print(f"schema at revision {current} ({settings.database_url})")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision; exit code 1 if it is not the newest."""
    settings = load_settings()
    from stitchwork.cli import ops
    from stitchwork.storage.migrate import head_revision

    current, head = run(ops.db_current(settings)), head_revision()
    if current != head:
        fail(
            f"schema at revision {current or 'none'}, newest is {head}: run `stitchwork db upgrade`"
        )
    console.print(f"revision {current}: up to date")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label, e.g. 'ci' or 'alice'.")],
    workspace: Annotated[str, typer.Option(help="Workspace (created if missing).")] = "default",
    role: Annotated[
        str,
        typer.Option(
            help="reader (read and stream), operator (submit every job type but shell, cancel, "
            "retry, executions, holds on the workspace's repositories) or admin (everything).",
        ),
    ] = "reader",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="An extra scope (repeatable), e.g. jobs:submit:shell; see docs/security.md.",
        ),
    ] = None,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored. The role
    defaults to reader: grant more with --role or --scope."""
    from stitchwork.cli import ops
    from stitchwork.errors import InvalidRequest

    scopes = scope or []
    try:
        ops.keys_check(role, scopes)
    except InvalidRequest as exc:
        fail(exc.message, code=2)
    settings = load_settings()
    prefix, key = run(ops.keys_create(settings, workspace, name, role, scopes))
    granted = f", scopes {', '.join(scopes)}" if scopes else ""
    console.print(f"created key {prefix} ({name}, workspace {workspace}, role {role}{granted}):")
    console.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefixes only) with their role and extra scopes."""
    settings = load_settings()
    from stitchwork.cli import ops

    table = Table(show_edge=False, header_style="bold")
    for column in ("prefix", "name", "workspace", "role", "scopes", "created", "state"):
        table.add_column(column)
    for row in run(ops.keys_list(settings)):
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (or the whole key).")],
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    settings = load_settings()
    from stitchwork.cli import ops

    console.print(f"revoked key {run(ops.keys_revoke(settings, prefix))}")


@app.command()
def gc(
    repo: Annotated[
        Path,
        typer.Argument(help="The repository whose agent worktrees to collect.", exists=True),
    ],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also delete stitchwork/* branches whose commits are on no other branch "
            "(their only copy: the work of failed or stopped tasks and branch-only results).",
        ),
    ] = False,
) -> None:
    """Remove the agent worktrees of REPO whose jobs have ended, including the ones kept
    after a failure for inspection, and the stitchwork/* branches of those jobs that were
    merged. Worktrees of queued or running tasks and reviews stay; so does every branch
    holding the only copy of a commit, unless --force."""
    settings = load_settings()
    from stitchwork.cli import ops

    collected = run(ops.gc(settings, repo.resolve(), force=force))
    for path in collected.removed:
        console.print(f"removed {path}")
    console.print(f"{len(collected.removed)} worktree(s) removed")
    if collected.kept_branches:
        console.print(
            f"kept {len(collected.kept_branches)} branch(es) whose commits are on no other "
            f"branch: {', '.join(collected.kept_branches)} (--force deletes them)"
        )


@app.command()
def demo(
    keep: Annotated[
        bool,
        typer.Option(
            "--keep", help="Keep the demo's folder (sample repository and database) afterwards."
        ),
    ] = False,
) -> None:
    """Run a plan of agent tasks on a sample git repository and show it live.

    Eight script-agent tasks run three at a time in their own worktrees, pass the repository's
    lint and test gates (one is rejected once and fixes itself after the continuation prompt)
    and merge into main. Exit code 0 when every check holds.
    """
    from stitchwork.cli.demo import run_demo

    run_demo(keep=keep)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
