"""What the engine-side commands do (serve, worker, db, keys). Imported only by those commands,
so commands that just talk HTTP start without loading the database stack."""

from __future__ import annotations

from pathlib import Path

from rich.panel import Panel

from stitchwork import __version__
from stitchwork.cli.client import Credentials
from stitchwork.cli.output import console
from stitchwork.cli.server import run_embedded, wait_for_signal
from stitchwork.config import Settings
from stitchwork.domain.guards import AGENT_JOB_TYPES
from stitchwork.errors import StitchworkError
from stitchwork.runner.worktrees import Collected, Worktrees
from stitchwork.runtime.engine import Engine, open_engine, run_worker_until_signalled
from stitchwork.services.auth import Role, check_grants
from stitchwork.services.job_types import JobTypeCatalog
from stitchwork.storage.db import Database
from stitchwork.storage.migrate import current_revision, upgrade

KeyRow = tuple[str, str, str, str, str, str, str]


async def serve(settings: Settings, *, with_worker: bool) -> None:
    async with (
        open_engine(settings) as engine,
        run_embedded(
            engine, host=settings.api_host, port=settings.api_port, with_worker=with_worker
        ) as running,
    ):
        await bootstrap(engine, settings, running.url)
        mode = "API + worker" if with_worker else "API only"
        console.print(
            f"stitchwork {__version__} serving on [bold]{running.url}[/bold] ({mode}; "
            f"database {settings.database_url}; sandbox {engine.confinement.sandbox.status()})."
            " Ctrl+C to stop."
        )
        await wait_for_signal()
        console.print("shutting down: waiting for running jobs…")


async def bootstrap(engine: Engine, settings: Settings, url: str) -> None:
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
    _, key = await engine.auth.create_key("default", "admin", Role.ADMIN)
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


async def worker(settings: Settings, queues: list[str] | None) -> None:
    async with open_engine(settings) as engine:
        await run_worker_until_signalled(engine, engine.worker(queues=queues))


async def db_upgrade(settings: Settings, revision: str) -> str | None:
    db = Database(settings.database_url)
    try:
        await upgrade(db, revision)
        return await current_revision(db)
    finally:
        await db.dispose()


async def db_current(settings: Settings) -> str | None:
    db = Database(settings.database_url)
    try:
        return await current_revision(db)
    finally:
        await db.dispose()


def keys_check(role: str, scopes: list[str]) -> None:
    """Refuse an unknown role or scope (``InvalidRequest``) before any database is opened."""
    check_grants(role, scopes, job_types=JobTypeCatalog().names)


async def keys_create(
    settings: Settings, workspace: str, name: str, role: str, scopes: list[str]
) -> tuple[str, str]:
    async with open_engine(settings) as engine:
        record, key = await engine.auth.create_key(
            workspace, name, role, scopes, job_types=engine.catalog.names
        )
        return record.prefix, key


async def keys_list(settings: Settings) -> list[KeyRow]:
    async with open_engine(settings) as engine:
        names = {w.id: w.name for w in await engine.auth.store.list_workspaces()}
        return [
            (
                k.prefix,
                k.name,
                names.get(k.workspace_id, "?"),
                k.role,
                ", ".join(k.scopes) or "-",
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                "revoked" if k.revoked_at else "active",
            )
            for k in await engine.auth.list_keys()
        ]


async def keys_revoke(settings: Settings, prefix: str) -> str:
    async with open_engine(settings) as engine:
        return (await engine.auth.revoke_key(prefix)).prefix


async def gc(settings: Settings, repo: Path, *, force: bool) -> Collected:
    """Remove the agent worktrees of ``repo`` whose jobs have ended, kept ones included, and
    their branches when merged (all of them with ``force``)."""
    async with open_engine(settings) as engine:
        live: set[str] = set()
        for job_type in AGENT_JOB_TYPES:  # a running review has a worktree too
            live |= await engine.store.unfinished_ids(job_type)
        worktrees = Worktrees(settings.agent_work_dir)
        return await worktrees.gc(repo, live, delete_branches=force, include_kept=True)
