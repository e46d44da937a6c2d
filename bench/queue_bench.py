"""Queue benchmark: stitchwork on SQLite and Postgres, and procrastinate on the same Postgres.

For each system it measures, on an isolated database (a temporary SQLite file, or a fresh
Postgres schema dropped at the end):

* submitted jobs/s: ``--jobs`` no-op jobs submitted in bulk, ``--batch-size`` per call;
* processed jobs/s: the same jobs drained by ONE worker, a separate OS process started by this
  script (``--role ...``), from the database's own timestamps: jobs / (last completion - first
  start);
* enqueue-to-start latency (p50/p99) while the worker idles and jobs arrive one at a time at
  ``--rate`` per second for ``--latency-seconds``; latency = start - enqueue, both from the DB.

Run: ``.venv/bin/python bench/queue_bench.py [--jobs 10000] [--backends sqlite,postgres]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
import structlog
from psycopg import sql
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from queue_report import (
    THROUGHPUT_METHOD,
    Load,
    Result,
    describe_machine,
    latency_stats,
    load_average,
    report,
    throughput,
)
from stitchwork.config import Settings
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.runtime.engine import Engine, run_worker_until_signalled
from stitchwork.storage.tables import runner_jobs

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_CONCURRENCY = 16
ACTOR = "bench"
READY = "READY"
IDLE_SETTLE_S = 1.0  # let a fresh or just-drained worker reach its idle wait before timing
POLL_S = 0.25
WORKER_START_TIMEOUT_S = 60.0

SCRIPT = str(Path(__file__).resolve())
# A fresh table that was just bulk-loaded has no planner statistics until autovacuum gets to it
# (within a minute or so), and plans made before then can be very different (procrastinate's
# fetch takes 6 ms instead of 0.6 ms with 10,000 jobs). Analyze both systems' tables right after
# the bulk submit, as a long-lived database would have been, so autovacuum's timing does not
# decide the result.
ANALYZE_STITCHWORK = "ANALYZE runner_jobs, job_events"
ANALYZE_PROCRASTINATE = "ANALYZE procrastinate_jobs, procrastinate_events"


def quiet_logging() -> None:
    """Benchmarks measure the queue, not log formatting: only warnings and errors print."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    # The app is built in a function and its task has an explicit name, so procrastinate's
    # warning about apps created in ``__main__`` (tasks named after the module) does not apply.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)


async def wait_until(
    check: Callable[[], Awaitable[tuple[bool, str]]],
    *,
    timeout_s: float,
    what: str,
    worker: asyncio.subprocess.Process | None = None,
) -> None:
    """Poll ``check`` until it says done; fail early if the worker process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, state = await check()
        if done:
            return
        if worker is not None and worker.returncode is not None:
            raise RuntimeError(f"{what}: the worker exited with code {worker.returncode} ({state})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f}s ({state})")
        await asyncio.sleep(POLL_S)


async def offer_load(
    submit_one: Callable[[], Awaitable[Any]], rate: float, seconds: float
) -> tuple[list[Any], float]:
    """Submit one job at a time on a fixed schedule; returns the ids and the achieved rate."""
    count = max(1, round(rate * seconds))
    loop = asyncio.get_running_loop()
    start = loop.time()
    ids = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        ids.append(await submit_one())
    return ids, count / (loop.time() - start)


# -- worker processes -------------------------------------------------------------------------


async def start_worker(*role_args: str) -> asyncio.subprocess.Process:
    """Start ``python bench/queue_bench.py --role ...`` and wait for it to say it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, *role_args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT_S)
    except TimeoutError:
        line = b""
    if line.decode().strip() != READY:
        await stop_worker(proc)
        raise RuntimeError(f"worker {role_args} did not start (exit code {proc.returncode})")
    return proc


async def stop_worker(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if it has not exited after 30 s."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def stitchwork_worker_main(args: argparse.Namespace) -> None:
    """One `stitchwork worker` process: Engine + Worker + LeaseSweeper until SIGTERM."""
    settings = Settings(database_url=args.database_url, worker_concurrency=args.concurrency)
    engine = await Engine.open(settings, migrate=False, search_path=args.search_path)
    try:
        worker = engine.worker(concurrency=args.concurrency)
        print(READY, flush=True)
        await run_worker_until_signalled(engine, worker)
    finally:
        await engine.close()


def procrastinate_app(pg_url: str, schema: str) -> procrastinate.App:
    """An app whose every connection (pool and LISTEN) uses ``schema``, with one `noop` task."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=pg_url,
            kwargs={"options": f"-c search_path={schema}"},
            # The same bounds as stitchwork's engine (pool_size=10, max_overflow=10).
            min_size=10,
            max_size=20,
        )
    )

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def procrastinate_worker_main(args: argparse.Namespace) -> None:
    app = procrastinate_app(args.pg_url, args.search_path)
    async with app.open_async():
        print(READY, flush=True)
        await app.run_worker_async(concurrency=args.concurrency, listen_notify=True, wait=True)


# -- stitchwork -------------------------------------------------------------------------------


def drained(engine: Engine, expected: int) -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def check() -> tuple[bool, str]:
        counts = await engine.store.count_by_status()
        state = ", ".join(f"{s.value}={n}" for s, n in counts.items() if n)
        return counts[JobStatus.COMPLETED] >= expected, state

    return check


async def stitchwork_rows(engine: Engine, ids: list[uuid.UUID] | None = None) -> list[Any]:
    stmt = select(runner_jobs.c.queued_at, runner_jobs.c.started_at, runner_jobs.c.completed_at)
    async with engine.db.read() as conn:
        if ids is None:
            stmt = stmt.where(runner_jobs.c.status == JobStatus.COMPLETED.value)
            return list((await conn.execute(stmt)).all())
        rows = []
        for i in range(0, len(ids), 1000):
            chunk = stmt.where(runner_jobs.c.id.in_(ids[i : i + 1000]))
            rows += (await conn.execute(chunk)).all()
        return rows


async def bench_stitchwork(
    backend: str, database_url: str, search_path: str | None, load: Load
) -> Result:
    settings = Settings(database_url=database_url, worker_concurrency=load.concurrency)
    engine = await Engine.open(settings, search_path=search_path)
    worker_args = ["--role", "stitchwork-worker", "--database-url", database_url]
    worker_args += ["--concurrency", str(load.concurrency)]
    if search_path:
        worker_args += ["--search-path", search_path]
    try:
        ws, _ = await engine.auth.ensure_workspace("default")
        print(f"[stitchwork/{backend}] submitting {load.jobs} jobs ...", flush=True)
        started = time.perf_counter()
        for i in range(0, load.jobs, load.batch_size):
            batch = [NewJob("noop")] * min(load.batch_size, load.jobs - i)
            await engine.jobs.submit_many(ws.id, batch, actor=ACTOR)
        submitted_per_s = load.jobs / (time.perf_counter() - started)
        if backend == "postgres":
            async with engine.db.begin() as conn:
                await conn.execute(text(ANALYZE_STITCHWORK))

        print(f"[stitchwork/{backend}] draining with one worker process ...", flush=True)
        proc = await start_worker(*worker_args)
        try:
            await wait_until(drained(engine, load.jobs), timeout_s=600, what="drain", worker=proc)
            rows = await stitchwork_rows(engine)
            processed_per_s, drain_s = throughput(
                [r.started_at for r in rows], [r.completed_at for r in rows]
            )

            async def submit_one() -> uuid.UUID:
                return (await engine.jobs.submit(ws.id, NewJob("noop"), actor=ACTOR)).job.id

            if backend == "postgres":
                mode = "worker process, woken by LISTEN/NOTIFY"
                print(f"[stitchwork/{backend}] latency: {mode} ...", flush=True)
                await asyncio.sleep(IDLE_SETTLE_S)
                ids, offered = await offer_load(submit_one, load.rate, load.latency_s)
                await wait_until(
                    drained(engine, load.jobs + len(ids)),
                    timeout_s=120,
                    what="latency",
                    worker=proc,
                )
        finally:
            await stop_worker(proc)

        if backend == "sqlite":
            # No cross-process wake-up on SQLite: measure what `stitchwork serve` runs, the
            # submitter and the worker in one process, woken by an in-process event.
            mode = "embedded: submitter + worker in one process, in-process wake-up"
            print(f"[stitchwork/{backend}] latency: {mode} ...", flush=True)
            worker = engine.worker(concurrency=load.concurrency)
            task = asyncio.create_task(run_worker_until_signalled(engine, worker))
            try:
                await asyncio.sleep(IDLE_SETTLE_S)
                ids, offered = await offer_load(submit_one, load.rate, load.latency_s)
                await wait_until(
                    drained(engine, load.jobs + len(ids)), timeout_s=120, what="latency"
                )
            finally:
                worker.stop()
                await task

        latencies = [
            (r.started_at - r.queued_at).total_seconds() * 1000
            for r in await stitchwork_rows(engine, ids)
        ]
    finally:
        await engine.close()
    return Result(
        system="stitchwork",
        backend=backend,
        concurrency=load.concurrency,
        jobs=load.jobs,
        submitted_per_s=submitted_per_s,
        processed_per_s=processed_per_s,
        drain_s=drain_s,
        latency_mode=mode,
        latency_jobs=len(latencies),
        offered_per_s=offered,
        **latency_stats(latencies),
    )


async def bench_stitchwork_sqlite(load: Load) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="stitchwork-bench-"))
    try:
        return await bench_stitchwork(
            "sqlite", f"sqlite+aiosqlite:///{tmp / 'bench.db'}", None, load
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def pg_schema(pg_url: str, prefix: str) -> AsyncIterator[str]:
    """A fresh schema, dropped (with everything in it) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


async def bench_stitchwork_postgres(pg_url: str, load: Load) -> Result:
    url = make_url(pg_url).set(drivername="postgresql+asyncpg").render_as_string(False)
    async with pg_schema(pg_url, "bench_sw") as schema:
        return await bench_stitchwork("postgres", url, schema, load)


# -- procrastinate ----------------------------------------------------------------------------


def pc_drained(app: procrastinate.App, expected: int) -> Callable[[], Awaitable[tuple[bool, str]]]:
    async def check() -> tuple[bool, str]:
        rows = await app.connector.execute_query_all_async(
            "SELECT status::text, count(*) AS n FROM procrastinate_jobs GROUP BY 1"
        )
        counts = {row["status"]: row["n"] for row in rows}
        return counts.get("succeeded", 0) >= expected, str(counts)

    return check


async def bench_procrastinate(pg_url: str, load: Load) -> Result:
    async with pg_schema(pg_url, "bench_pc") as schema:
        app = procrastinate_app(pg_url, schema)
        async with app.open_async():
            # The parent's own queries go through the app's pool, which has the search_path.
            query = app.connector.execute_query_all_async
            await app.schema_manager.apply_schema_async()
            task = app.tasks["noop"]
            print(f"[procrastinate/postgres] deferring {load.jobs} jobs ...", flush=True)
            started = time.perf_counter()
            for i in range(0, load.jobs, load.batch_size):
                await task.batch_defer_async(
                    *({} for _ in range(min(load.batch_size, load.jobs - i)))
                )
            submitted_per_s = load.jobs / (time.perf_counter() - started)
            await app.connector.execute_query_async(ANALYZE_PROCRASTINATE)

            print("[procrastinate/postgres] draining with one worker process ...", flush=True)
            proc = await start_worker(
                "--role", "procrastinate-worker", "--pg-url", pg_url, "--search-path", schema,
                "--concurrency", str(load.concurrency),
            )  # fmt: skip
            try:
                await wait_until(
                    pc_drained(app, load.jobs), timeout_s=600, what="drain", worker=proc
                )
                (window,) = await query(
                    "SELECT min(at) FILTER (WHERE type = 'started') AS first,"
                    " max(at) FILTER (WHERE type = 'succeeded') AS last,"
                    " count(*) FILTER (WHERE type = 'succeeded') AS done"
                    " FROM procrastinate_events"
                )
                drain_s = (window["last"] - window["first"]).total_seconds()
                processed_per_s = window["done"] / drain_s

                mode = "worker process, woken by LISTEN/NOTIFY"
                print(f"[procrastinate/postgres] latency: {mode} ...", flush=True)
                await asyncio.sleep(IDLE_SETTLE_S)
                ids, offered = await offer_load(task.defer_async, load.rate, load.latency_s)
                await wait_until(
                    pc_drained(app, load.jobs + len(ids)),
                    timeout_s=120,
                    what="latency",
                    worker=proc,
                )
            finally:
                await stop_worker(proc)
            rows = await query(
                "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'started')"
                " - max(at) FILTER (WHERE type = 'deferred')) * 1000 AS ms"
                " FROM procrastinate_events WHERE job_id = ANY(%(ids)s) GROUP BY job_id",
                ids=ids,
            )
            latencies = [float(row["ms"]) for row in rows]
    return Result(
        system="procrastinate",
        backend="postgres",
        concurrency=load.concurrency,
        jobs=load.jobs,
        submitted_per_s=submitted_per_s,
        processed_per_s=processed_per_s,
        drain_s=drain_s,
        latency_mode=mode,
        latency_jobs=len(latencies),
        offered_per_s=offered,
        **latency_stats(latencies),
    )


async def postgres_version(pg_url: str) -> str:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
        return str(row[0]) if row else "unknown"


# -- entry point ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        raise SystemExit(f"unknown backend(s): {', '.join(sorted(unknown))}")
    load = Load(args.jobs, args.batch_size, args.concurrency, args.rate, args.latency_seconds)
    load_before = load_average()  # other work on the machine skews every figure: show it
    pg_version = await postgres_version(args.pg_url) if "postgres" in backends else None
    runs: list[list[Result]] = []
    for run in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"-- run {run} of {args.repeat}", flush=True)
        results = []
        for backend in backends:
            if backend == "sqlite":
                results.append(await bench_stitchwork_sqlite(load))
            else:
                results.append(await bench_stitchwork_postgres(args.pg_url, load))
                if not args.no_procrastinate:
                    results.append(await bench_procrastinate(args.pg_url, load))
        runs.append(results)
    machine = describe_machine(pg_version, load_before)
    print(report(machine, load, runs))
    return {
        "machine": machine,
        "load": asdict(load),
        "method": THROUGHPUT_METHOD,
        "runs": [[asdict(r) for r in results] for results in runs],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to submit and drain")
    parser.add_argument("--batch-size", type=int, default=1_000, help="jobs per bulk submit")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="worker concurrency (the same for stitchwork and procrastinate)",
    )
    parser.add_argument("--rate", type=float, default=200, help="offered load for latency, jobs/s")
    parser.add_argument("--latency-seconds", type=float, default=5, help="latency phase length")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything N times; report the medians"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="libpq URL of the Postgres db")
    parser.add_argument("--no-procrastinate", action="store_true", help="skip procrastinate")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--role",
        choices=["bench", "stitchwork-worker", "procrastinate-worker"],
        default="bench",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--search-path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    quiet_logging()
    role = {
        "bench": main,
        "stitchwork-worker": stitchwork_worker_main,
        "procrastinate-worker": procrastinate_worker_main,
    }[arguments.role]
    outcome = asyncio.run(role(arguments))
    if arguments.json and outcome:
        Path(arguments.json).write_text(json.dumps(outcome, indent=2) + "\n")
