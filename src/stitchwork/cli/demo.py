"""``stitchwork demo``: the embedded engine, a batch of real shell jobs, shown live.

Everything goes through the real parts: the HTTP API on a local port, the SQL queue, a worker
with concurrency 3 and the lease sweeper, on a fresh SQLite database in a temporary folder.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stitchwork.cli.common import load_settings, run
from stitchwork.cli.logs import configure_logging
from stitchwork.cli.output import console, fail, status_text
from stitchwork.cli.server import run_embedded
from stitchwork.runtime.engine import open_engine

TERMINAL = {"completed", "failed", "cancelled"}
DEMO_TIMEOUT_S = 120


@dataclass(frozen=True)
class DemoJob:
    label: str
    request: dict[str, Any]
    expect_status: str
    expect_attempt: int
    story: str


def _steps(n: int, pause_s: float, what: str) -> str:
    return (
        f"for i in $(seq 1 {n}); do echo ::progress::$((i*100/{n})); "
        f'echo "{what} $i/{n}"; sleep {pause_s}; done'
    )


def demo_jobs(workdir: Path) -> list[DemoJob]:
    flaky_mark = workdir / "flaky.mark"

    def shell(cmd: str, **extra: Any) -> dict[str, Any]:
        payload = {"command": cmd, **extra.pop("payload", {})}
        return {"type": "shell", "payload": payload, **extra}

    return [
        DemoJob("lint", shell(_steps(5, 0.3, "linted module")), "completed", 1, "passes"),
        DemoJob("typecheck", shell(_steps(4, 0.4, "checked package")), "completed", 1, "passes"),
        DemoJob("unit tests", shell(_steps(8, 0.25, "test file")), "completed", 1, "passes"),
        DemoJob(
            "flaky integration",
            shell(
                f'if [ -f "{flaky_mark}" ]; then echo "42 passed"; '
                f'else touch "{flaky_mark}"; echo "connection reset by peer" >&2; exit 1; fi',
                max_attempts=3,
            ),
            "completed",
            2,
            "fails once, retried with backoff, passes",
        ),
        DemoJob(
            "broken build",
            shell('echo "error: undefined symbol parse_config" >&2; exit 2', max_attempts=2),
            "failed",
            2,
            "fails on both attempts",
        ),
        DemoJob(
            "slow migration",
            shell("sleep 30", max_attempts=1, payload={"timeout_s": 1.5}),
            "failed",
            1,
            "killed by its 1.5 s timeout",
        ),
        DemoJob(
            "deploy preview",
            shell(_steps(60, 0.5, "uploaded chunk")),
            "cancelled",
            1,
            "cancelled while running",
        ),
        DemoJob(
            "docs build",
            {"type": "sleep", "payload": {"seconds": 1.5, "progress_steps": 5}},
            "completed",
            1,
            "passes",
        ),
        DemoJob(
            "hotfix",
            shell(_steps(3, 0.2, "patched file"), priority=10),
            "completed",
            1,
            "submitted last with priority 10",
        ),
    ]


def _bar(percent: int, width: int = 10) -> Text:
    filled = round(width * percent / 100)
    return Text("█" * filled + "░" * (width - filled) + f" {percent:>3}%")


def _table(rows: list[tuple[DemoJob, dict[str, Any]]], elapsed_s: float) -> Table:
    table = Table(title=f"stitchwork demo · {elapsed_s:4.1f}s", header_style="bold", expand=False)
    # Fits 80 columns: the note gives way first, never the status.
    table.add_column("job", no_wrap=True, min_width=17)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("try", no_wrap=True, min_width=3)
    table.add_column("progress", no_wrap=True, min_width=15)
    table.add_column("note", overflow="ellipsis", no_wrap=True, max_width=20)
    for demo_job, job in rows:
        note = job["error"] or ""
        table.add_row(
            demo_job.label,
            status_text(job["status"]),
            f"{job['attempt']}/{job['max_attempts']}",
            _bar(job["progress_percent"]),
            Text(note, style="dim"),
        )
    return table


def run_demo(*, keep: bool) -> None:
    """``stitchwork demo`` (options and help text live in ``cli/main.py``)."""
    workdir = Path(tempfile.mkdtemp(prefix="stitchwork-demo-"))
    settings = load_settings(
        data_dir=workdir,
        database_url="",
        api_port=0,
        worker_concurrency=3,
        backoff_base=timedelta(milliseconds=500),
        backoff_max=timedelta(seconds=2),
        cancel_grace=timedelta(seconds=2),
        shutdown_grace=timedelta(seconds=5),
        log_level="warning",
    )
    configure_logging(settings.log_level)
    try:
        ok = run(_demo(settings, workdir))
    finally:
        if keep:
            console.print(f"demo database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        fail("some jobs did not end as expected (see the table above)")


async def _demo(settings: Any, workdir: Path) -> bool:
    jobs = demo_jobs(workdir)
    started = time.monotonic()
    async with open_engine(settings) as engine:
        _, key = await engine.auth.create_key("default", "demo")
        async with run_embedded(engine, host="127.0.0.1", port=0) as running:
            console.print(
                f"embedded engine: API on {running.url}, SQLite at {settings.database_url}, "
                "worker concurrency 3"
            )
            async with httpx.AsyncClient(
                base_url=f"{running.url}/api/v1",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            ) as http:
                rows = await _run_batch(http, jobs, started)
            events = 0
            for _, job in rows:
                events += len(await engine.store.list_events(UUID(job["id"])))
    return _summary(rows, events, time.monotonic() - started)


async def _run_batch(
    http: httpx.AsyncClient, jobs: list[DemoJob], started: float
) -> list[tuple[DemoJob, dict[str, Any]]]:
    ids: list[str] = []
    for demo_job in jobs:
        response = await http.post("/jobs", json=demo_job.request)
        response.raise_for_status()
        ids.append(response.json()["id"])
    by_label = dict(zip((j.label for j in jobs), ids, strict=True))
    cancelled = False
    rows: list[tuple[DemoJob, dict[str, Any]]] = []
    with Live(console=console, refresh_per_second=8) as live:
        while time.monotonic() - started < DEMO_TIMEOUT_S:
            page = (await http.get("/jobs", params={"limit": 50})).json()["items"]
            current = {j["id"]: j for j in page}
            rows = [(d, current[i]) for d, i in zip(jobs, ids, strict=True)]
            live.update(_table(rows, time.monotonic() - started))
            deploy = current[by_label["deploy preview"]]
            if not cancelled and deploy["status"] == "running" and deploy["progress_percent"] >= 5:
                (await http.post(f"/jobs/{deploy['id']}/cancel")).raise_for_status()
                cancelled = True
            if all(j["status"] in TERMINAL for _, j in rows):
                break
            await asyncio.sleep(0.15)
    return rows


def _summary(rows: list[tuple[DemoJob, dict[str, Any]]], events: int, elapsed_s: float) -> bool:
    counts: dict[str, int] = {}
    ok = True
    console.print()
    for demo_job, job in rows:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
        as_expected = (
            job["status"] == demo_job.expect_status and job["attempt"] == demo_job.expect_attempt
        )
        ok &= as_expected
        mark = "[green]✓[/green]" if as_expected else "[red]✗[/red]"
        console.print(
            f" {mark} {demo_job.label:<18} {job['status']:<9} #{job['attempt']}  "
            f"[dim]{demo_job.story}[/dim]"
        )
    by_label = {d.label: j for d, j in rows}
    hotfix, docs = by_label["hotfix"], by_label["docs build"]
    jumped = bool(hotfix["started_at"] and docs["started_at"]) and (
        hotfix["started_at"] < docs["started_at"]
    )
    ok &= jumped
    mark = "[green]✓[/green]" if jumped else "[red]✗[/red]"
    console.print(f" {mark} hotfix started before docs build, which was queued before it")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(
        f"\n{len(rows)} jobs in {elapsed_s:.1f}s: {summary}; {events} events recorded, "
        "each written in the same transaction as the change it describes."
    )
    console.print(
        "Next: `stitchwork serve`, then in another terminal "
        "`stitchwork jobs submit shell -c 'echo hello' --watch`."
    )
    return ok
