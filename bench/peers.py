"""Peer benchmark: stitchwork on Redis + Postgres against bullmq, SAQ, arq, RQ and Celery.

The same no-op workload, in one run, on the same local Redis, through each system's own worker
processes (2 each): stitchwork (BullMQ queue on Redis, every job and event recorded in
Postgres; ``stitchwork worker`` processes; jobs submitted through ``JobService.submit_many``),
the ``bullmq`` Python package, SAQ, arq, RQ (``SimpleWorker``) and Celery (Redis broker).

For each system: start its workers and wait until they are idle; enqueue ``--jobs`` jobs while
they run (jobs/s from the first enqueue call to the last job finished); then offer ``--rate``
jobs/s one at a time for ``--latency-seconds`` (enqueue-to-start latency, measured in the job
against the enqueue time carried in its arguments). Each system gets its own key prefix, or its
own empty Redis database where its keys cannot be prefixed, and everything is removed after.

arq pins ``redis<6``, which the project's ``bullmq`` cannot use, so arq runs from its own
virtual environment, ``bench/.venvs/arq`` (made with uv on first use; gitignored).

Run: ``.venv/bin/python bench/peers.py [--jobs 10000] [--only saq,stitchwork] [--skip celery]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from _peers_report import Outcome, Record, describe_machine, outcome, report
from _peers_systems import READY, RECORD_KEY_ENV, RECORD_URL_ENV
from queue_report import load_average
from stitchwork.storage.db import Database
from stitchwork.storage.migrate import upgrade
from stitchwork.storage.tables import runner_jobs

SYSTEMS = ("stitchwork", "bullmq", "saq", "arq", "rq", "celery")
BENCH = Path(__file__).resolve().parent
SYSTEMS_SCRIPT = str(BENCH / "_peers_systems.py")
ARQ_VERSION = "0.28.0"
ARQ_VENV = BENCH / ".venvs" / "arq"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
WORKER_PROCESSES = 2
WARMUP_JOBS = 50
SETTLE_S = 1.0
POLL_S = 0.25
PROGRESS_EVERY_S = 5.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLAIM_KEY = "stitchwork-bench:claimed-by"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STITCHWORK_READY = "worker_started"
NOTABLE = ("[warning", "[error", "Traceback")


@dataclass
class Target:
    """One system under test: where its keys live and how its processes start."""

    system: str
    python: str
    redis_url: str
    name: str  # key prefix or queue name
    record_key: str
    workers_label: str
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def worker_argv(self, args: argparse.Namespace) -> list[str]:
        if self.system == "stitchwork":
            c = str(args.concurrency)
            return [self.python, "-m", "stitchwork.cli.main", "worker", "--concurrency", c]
        return [self.python, SYSTEMS_SCRIPT, "worker", *self.common(args)]

    def common(self, args: argparse.Namespace) -> list[str]:
        argv = [self.system, "--redis-url", self.redis_url, "--name", self.name]
        argv += ["--concurrency", str(args.concurrency), "--celery-pool", args.celery_pool]
        return argv + (["--database-url", self.database_url] if self.database_url else [])


def redis_db_url(base: str, db: int) -> str:
    return urlsplit(base)._replace(path=f"/{db}").geturl()


async def claim_empty_db(base_url: str, run_id: str) -> int:
    """An empty Redis database (1-15), marked as ours until the cleanup removes the mark."""
    for db in range(1, 16):
        client = aioredis.Redis.from_url(redis_db_url(base_url, db))
        try:
            if await client.set(CLAIM_KEY, run_id, nx=True, ex=3600):
                if await client.dbsize() == 1:
                    return db
                await client.delete(CLAIM_KEY)
        finally:
            await client.aclose()
    raise RuntimeError("no empty Redis database among 1-15 for the systems that need one")


async def delete_keys(url: str, patterns: list[str]) -> int:
    client = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        for pattern in patterns:
            batch = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(batch), 1000):
                deleted += await client.delete(*batch[i : i + 1000])
    finally:
        await client.aclose()
    return deleted


async def pg_admin(pg_url: str, sql: str) -> str:
    conn = await asyncpg.connect(pg_url)
    try:
        return str(await conn.fetchval(sql))
    finally:
        await conn.close()


def ensure_arq_venv() -> str:
    """The interpreter of ``bench/.venvs/arq``, made with uv if missing."""
    python = ARQ_VENV / "bin" / "python"
    check = [str(python), "-c", "import arq; print(arq.VERSION)"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.stdout.strip() == ARQ_VERSION:
            print(f"[arq] using the separate venv {ARQ_VENV} (arq {ARQ_VERSION})", flush=True)
            return str(python)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to create the arq venv: .venv/bin/pip install uv")
    print(f"[arq] creating a separate venv {ARQ_VENV} with uv (arq pins redis<6) ...", flush=True)
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(ARQ_VENV)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(python), f"arq=={ARQ_VERSION}"], check=True
    )
    return str(python)


@contextlib.asynccontextmanager
async def prepare(system: str, args: argparse.Namespace, run_id: str) -> AsyncIterator[Target]:
    """Set a system up (database, Redis database, venv) and remove all it left on exit."""
    name = f"swpeers-{run_id}-{system}"
    record_key = f"swpeers-{run_id}:records:{system}"
    db: int | None = None
    c = args.concurrency
    if system in ("arq", "rq", "celery"):  # their keys cannot all be prefixed
        db = await claim_empty_db(args.redis_url, run_id)
    url = redis_db_url(args.redis_url, db) if db is not None else args.redis_url
    labels = {
        "bullmq": f"bullmq.Worker, concurrency {c}",
        "saq": f"saq.Worker, concurrency {c}",
        "arq": f"arq Worker, max_jobs {c}",
        "rq": "rq SimpleWorker (one job at a time)",
        "celery": f"celery worker, --pool={args.celery_pool}"
        + (f" --concurrency={c}" if args.celery_pool != "solo" else ""),
    }
    patterns = {
        "bullmq": [f"{name}:*"],
        "saq": [f"saq:*{name}*"],
        "arq": ["arq:*", f"{name}*"],
        "rq": ["rq:*"],
        "celery": [f"{name}*", "_kombu.*", "unacked*", "celery*"],
    }
    target: Target
    try:
        if system == "stitchwork":
            dbname = f"swpeers_{run_id}"
            await pg_admin(args.pg_url, f'CREATE DATABASE "{dbname}"')
            database_url = (
                make_url(args.pg_url)
                .set(drivername="postgresql+asyncpg", database=dbname)
                .render_as_string(False)
            )
            database = Database(database_url)
            try:
                await upgrade(database)
            finally:
                await database.dispose()
            target = Target(
                system, sys.executable, url, name, record_key,
                f"`stitchwork worker --concurrency {c}`", database_url=database_url,
                env={
                    "STITCHWORK_DATABASE_URL": database_url,
                    "STITCHWORK_QUEUE_URL": url,
                    "STITCHWORK_BULLMQ_PREFIX": name,
                    "STITCHWORK_LOG_LEVEL": "info",  # for "worker_started"; no per-job lines
                },
            )  # fmt: skip
        else:
            python = ensure_arq_venv() if system == "arq" else sys.executable
            target = Target(system, python, url, name, record_key, labels[system])
        yield target
    finally:
        removed = await delete_keys(url, patterns.get(system, [f"{name}:*"]))
        removed += await delete_keys(args.redis_url, [record_key])
        if system == "stitchwork":
            await pg_admin(args.pg_url, f'DROP DATABASE IF EXISTS "swpeers_{run_id}" WITH (FORCE)')
        left = ""
        if db is not None:
            client = aioredis.Redis.from_url(url)
            try:
                await client.delete(CLAIM_KEY)
                left = f"; {await client.dbsize()} keys left in Redis db {db}"
            finally:
                await client.aclose()
        print(f"[{system}] cleaned up: {removed} Redis keys removed{left}", flush=True)


# -- processes --------------------------------------------------------------------------------


async def start_worker(
    target: Target, args: argparse.Namespace, log: Path
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        RECORD_URL_ENV: args.redis_url,
        RECORD_KEY_ENV: target.record_key,
        "STITCHWORK_DATA_DIR": str(log.parent / "data"),
        **target.env,
    }
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            *target.worker_argv(args), stdout=out, stderr=subprocess.STDOUT, env=env
        )


async def wait_ready(
    target: Target, procs: list[asyncio.subprocess.Process], logs: list[Path]
) -> None:
    marker = STITCHWORK_READY if target.system == "stitchwork" else READY
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(marker in log.read_text(errors="replace") for log in logs):
        for proc, log in zip(procs, logs, strict=True):
            if proc.returncode is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"a worker exited with code {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers not ready after {START_TIMEOUT_S:.0f}s (see {logs[0]})")
        await asyncio.sleep(POLL_S)


async def stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM (each library's graceful shutdown), then SIGKILL after 30 s."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def cpu_s(procs: list[asyncio.subprocess.Process]) -> float:
    """CPU seconds (user + system) the worker processes have used so far."""
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


async def produce(target: Target, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        target.python, SYSTEMS_SCRIPT, "produce", *target.common(args), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"producer failed ({proc.returncode}): {err.decode()[-2000:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# -- progress and records ---------------------------------------------------------------------


async def finished_jobs(target: Target, args: argparse.Namespace) -> int:
    if target.database_url is None:
        client = aioredis.Redis.from_url(args.redis_url)
        try:
            return int(await client.llen(target.record_key))
        finally:
            await client.aclose()
    database = Database(target.database_url)
    try:
        async with database.read() as conn:
            stmt = select(func.count()).where(runner_jobs.c.status == "completed")
            return int((await conn.execute(stmt)).scalar_one())
    finally:
        await database.dispose()


async def records(target: Target, args: argparse.Namespace) -> list[Record]:
    if target.database_url is None:
        client = aioredis.Redis.from_url(args.redis_url)
        try:
            raw = await client.lrange(target.record_key, 0, -1)
        finally:
            await client.aclose()
        rows = [item.decode().split() for item in raw]
        return [Record(p, float(e), float(s), float(f)) for p, e, s, f in rows]
    database = Database(target.database_url)
    cols = runner_jobs.c
    try:
        async with database.read() as conn:
            stmt = select(cols.payload, cols.started_at, cols.completed_at)
            result = await conn.execute(stmt.where(cols.status == "completed"))
            return [
                Record(p["phase"], float(p["enq"]), s.timestamp(), f.timestamp())
                for p, s, f in result.all()
            ]
    finally:
        await database.dispose()


async def wait_finished(
    target: Target,
    args: argparse.Namespace,
    expected: int,
    procs: list[asyncio.subprocess.Process],
    what: str,
) -> None:
    started = last_print = time.monotonic()
    timeout_s = max(120.0, expected / 20)
    while (done := await finished_jobs(target, args)) < expected:
        now = time.monotonic()
        if any(p.returncode is not None for p in procs):
            raise RuntimeError(f"{what}: a worker died ({done}/{expected} jobs finished)")
        if now - started > timeout_s:
            raise TimeoutError(f"{what}: {done}/{expected} jobs finished after {timeout_s:.0f}s")
        if now - last_print >= PROGRESS_EVERY_S:
            print(f"[{target.system}] {what}: {done:,}/{expected:,} jobs finished", flush=True)
            last_print = now
        await asyncio.sleep(POLL_S)


async def bench_system(system: str, args: argparse.Namespace, run_id: str, tmp: Path) -> Outcome:
    async with prepare(system, args, run_id) as target:
        logs = [tmp / f"{system}-worker-{i}.log" for i in range(WORKER_PROCESSES)]
        print(f"[{system}] starting {WORKER_PROCESSES} workers: {target.workers_label}", flush=True)
        procs = [await start_worker(target, args, log) for log in logs]
        try:
            await wait_ready(target, procs, logs)
            await asyncio.sleep(SETTLE_S)
            await produce(target, args, "--phase", "warmup", "--jobs", str(WARMUP_JOBS))
            await wait_finished(target, args, WARMUP_JOBS, procs, "warm-up")
            print(f"[{system}] enqueueing {args.jobs:,} jobs while the workers run ...", flush=True)
            cpu_before = cpu_s(procs)
            bulk = await produce(
                target, args, "--jobs", str(args.jobs), "--batch-size", str(args.batch_size)
            )
            print(f"[{system}] enqueued in {bulk['enqueue_s']:.2f}s; draining ...", flush=True)
            await wait_finished(target, args, WARMUP_JOBS + args.jobs, procs, "drain")
            worker_cpu_s = cpu_s(procs) - cpu_before
            await asyncio.sleep(SETTLE_S)
            print(
                f"[{system}] latency: {args.rate:g} jobs/s for {args.latency_seconds:g}s ...",
                flush=True,
            )
            offer = await produce(
                target, args, "--phase", "latency", "--rate", str(args.rate),
                "--seconds", str(args.latency_seconds),
            )  # fmt: skip
            total = WARMUP_JOBS + args.jobs + offer["jobs"]
            await wait_finished(target, args, total, procs, "latency")
            done = await records(target, args)
        finally:
            await stop_workers(procs)
        if system == "stitchwork":  # its warnings are worth seeing next to its figures
            lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
            notable = [line for line in lines if any(w in line for w in NOTABLE)]
            print(f"[{system}] worker logs: {len(lines)} lines, {len(notable)} warnings/errors")
            for line in notable[:8]:
                print(f"[{system}]   {line[:200]}")
    return outcome(
        system,
        f"{WORKER_PROCESSES} x {target.workers_label}",
        [r for r in done if r.phase == "bulk"],
        [r for r in done if r.phase == "latency"],
        bulk["first_enqueue"],
        bulk["enqueue_s"],
        offer["jobs"] / offer["enqueue_s"],
        worker_cpu_s,
    )


def selected(args: argparse.Namespace) -> list[str]:
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SYSTEMS)
    skip = [s.strip() for s in args.skip.split(",") if s.strip()] if args.skip else []
    unknown = sorted(set(only + skip) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown system(s): {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in only and s not in skip]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    systems = selected(args)
    load_before = load_average()  # other work on the machine skews every figure: show it
    client = aioredis.Redis.from_url(args.redis_url)
    try:
        redis_version = str((await client.info("server"))["redis_version"])
    finally:
        await client.aclose()
    pg_version = await pg_admin(args.pg_url, "SHOW server_version")
    run_id = uuid.uuid4().hex[:8]
    outcomes: list[Outcome] = []
    failures: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="stitchwork-peers-"))
    try:
        for system in systems:
            try:
                outcomes.append(await bench_system(system, args, run_id, tmp))
            except Exception as exc:  # one broken system must not hide the others' figures
                failures[system] = f"{type(exc).__name__}: {exc}"
                print(f"[{system}] FAILED: {failures[system]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = describe_machine(redis_version, pg_version, ARQ_VERSION if "arq" in systems else None)
    settings = (
        f"{args.jobs:,} jobs, bulk calls of {args.batch_size}, {WORKER_PROCESSES} worker processes "
        f"per system, concurrency {args.concurrency} where the library has it; latency "
        f"{args.rate:g} jobs/s for {args.latency_seconds:g}s; {WARMUP_JOBS} warm-up jobs first"
    )
    print(report(machine, load_before, settings, outcomes, failures))
    return {"machine": machine, "settings": settings, "results": [asdict(o) for o in outcomes]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs to enqueue and drain")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--skip", help="comma-separated systems to leave out")
    parser.add_argument("--batch-size", type=int, default=1_000, help="jobs per enqueue call")
    parser.add_argument("--concurrency", type=int, default=16, help="per worker process")
    parser.add_argument(
        "--celery-pool", default="solo", choices=["solo", "threads"], help="solo was faster here"
    )
    # Light enough for the slowest peer (RQ drains ~150-230 jobs/s here): latency, not backlog.
    parser.add_argument("--rate", type=float, default=50, help="offered load for latency, jobs/s")
    parser.add_argument("--latency-seconds", type=float, default=10, help="latency phase length")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="libpq URL of a Postgres db")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.batch_size < 1 or args.concurrency < 1 or args.rate <= 0:
        parser.error("--jobs, --batch-size, --concurrency and --rate must be positive")
    try:
        if not selected(args):
            parser.error("--only/--skip leave no system to measure")
    except ValueError as exc:
        parser.error(str(exc))
    return args


if __name__ == "__main__":
    arguments = parse_args()
    outcome_json = asyncio.run(main(arguments))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(outcome_json, indent=2) + "\n")
