"""``stitchwork``: serve, worker, db, keys, jobs, queues, demo."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.panel import Panel

from stitchwork import __version__
from stitchwork.cli import demo as demo_cmd
from stitchwork.cli import events as events_cmd
from stitchwork.cli import jobs as jobs_cmd
from stitchwork.cli import queues as queues_cmd
from stitchwork.cli.client import Credentials
from stitchwork.cli.common import load_settings, run
from stitchwork.cli.logs import configure_logging
from stitchwork.cli.output import console, fail
from stitchwork.cli.server import run_embedded, wait_for_signal
from stitchwork.config import Settings
from stitchwork.errors import StitchworkError
from stitchwork.runtime.engine import Engine, open_engine, run_worker_until_signalled
from stitchwork.storage.db import Database
from stitchwork.storage.migrate import current_revision, head_revision, upgrade

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
app.command("demo")(demo_cmd.demo)


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
    run(_serve(settings, with_worker=not no_worker))


async def _serve(settings: Settings, *, with_worker: bool) -> None:
    async with (
        open_engine(settings) as engine,
        run_embedded(
            engine, host=settings.api_host, port=settings.api_port, with_worker=with_worker
        ) as running,
    ):
        await _bootstrap(engine, settings, running.url)
        mode = "API + worker" if with_worker else "API only"
        console.print(
            f"stitchwork {__version__} serving on [bold]{running.url}[/bold] ({mode}; "
            f"database {settings.database_url}). Ctrl+C to stop."
        )
        await wait_for_signal()
        console.print("shutting down: waiting for running jobs…")


async def _bootstrap(engine: Engine, settings: Settings, url: str) -> None:
    """First start: default workspace + admin key saved for the CLI. Later starts: keep the
    stored key if it still works, and record where the API now listens."""
    path = settings.credentials_path
    stored = Credentials.load(path)
    if stored is not None:
        try:
            await engine.auth.authenticate(stored.api_key)
        except StitchworkError:
            stored = None
    if stored is not None:
        if stored.api_url != url:
            Credentials(url, stored.api_key, stored.workspace).save(path)
        return
    _, key = await engine.auth.create_key("default", "admin")
    Credentials(url, key, "default").save(path)
    console.print(
        Panel.fit(
            f"Created workspace [bold]default[/bold] and an admin API key:\n\n  {key}\n\n"
            f"It is stored in {path} (mode 600), so CLI commands work as they are:\n"
            "  stitchwork jobs submit shell --command 'echo hello' --watch\n"
            "From anything else, send it as a bearer token:\n"
            f"  curl -H 'Authorization: Bearer {key}' {url}/api/v1/jobs",
            title="first start",
        )
    )


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

    async def _run() -> None:
        async with open_engine(settings) as engine:
            await run_worker_until_signalled(engine, engine.worker(queues=queue or None))

    run(_run())


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply schema migrations (safe to run repeatedly and from several hosts)."""
    settings = load_settings()

    async def _run() -> str | None:
        db = Database(settings.database_url)
        try:
            await upgrade(db, revision)
            return await current_revision(db)
        finally:
            await db.dispose()

    console.print(f"schema at revision {run(_run())} ({settings.database_url})")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision; exit code 1 if it is not the newest."""
    settings = load_settings()

    async def _run() -> str | None:
        db = Database(settings.database_url)
        try:
            return await current_revision(db)
        finally:
            await db.dispose()

    current, head = run(_run()), head_revision()
    if current != head:
        fail(
            f"schema at revision {current or 'none'}, newest is {head}: run `stitchwork db upgrade`"
        )
    console.print(f"revision {current}: up to date")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label, e.g. 'ci' or 'alice'.")],
    workspace: Annotated[str, typer.Option(help="Workspace (created if missing).")] = "default",
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    settings = load_settings()

    async def _run() -> tuple[str, str]:
        async with open_engine(settings) as engine:
            record, key = await engine.auth.create_key(workspace, name)
            return record.prefix, key

    prefix, key = run(_run())
    console.print(f"created key {prefix} ({name}, workspace {workspace}):")
    console.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (prefixes only)."""
    settings = load_settings()

    async def _run() -> list[tuple[str, str, str, str, str]]:
        async with open_engine(settings) as engine:
            names = {w.id: w.name for w in await engine.auth.store.list_workspaces()}
            return [
                (
                    k.prefix,
                    k.name,
                    names.get(k.workspace_id, "?"),
                    k.created_at.strftime("%Y-%m-%d %H:%M"),
                    "revoked" if k.revoked_at else "active",
                )
                for k in await engine.auth.list_keys()
            ]

    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("prefix", "name", "workspace", "created", "state"):
        table.add_column(column)
    for row in run(_run()):
        table.add_row(*row)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (or the whole key).")],
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    settings = load_settings()

    async def _run() -> str:
        async with open_engine(settings) as engine:
            return (await engine.auth.revoke_key(prefix)).prefix

    console.print(f"revoked key {run(_run())}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
