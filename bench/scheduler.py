"""Scheduler benchmark: a 10,000-node DAG of instant tasks in one process, and lock decisions.

* Pull mode: a random DAG (``--nodes``; 0-3 dependencies on random earlier nodes; 1-3 random
  claims per node over a synthetic tree, mostly disjoint files) runs as a pull-mode execution.
  One in-process orchestrator takes nodes with ``next_node`` until it returns None (at most the
  concurrency), completes them with ``complete_node``, and repeats until the execution
  completes. Tasks are instant, so all of the time is overhead: total / nodes, where the total
  counts parsing the plan, creating and starting the execution, and the loop.
* Jobs dispatch (``--job-nodes``; smaller, since every node is a real runner job): the same
  kind of DAG with node type ``noop``, run by an in-process worker and scheduler.
* Lock decisions: a pure ``LockTable`` holding ``--held`` random claims of ``--owners`` owners
  answers ``conflicts`` (every conflict, as ``lock.contended`` lists them) and the scheduler's
  decision ``try_acquire(first=True)`` (+ ``release``) for ``--requests`` random requests,
  cold (claim caches cleared before each) and warm; then ``next_node``, a whole transaction,
  while ``--held`` read holds sit on the repository.

Run: ``.venv/bin/python bench/scheduler.py [--backend sqlite|postgres] [--nodes 10000]``;
``--nodes 1000 --job-nodes 200`` for a smoke run; ``--profile`` adds one profiled pull run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from _scheduler_report import (
    JobsResult,
    Latency,
    LockTableResult,
    PersistedLockResult,
    PullResult,
    Report,
    as_json,
    describe_machine,
    finish_machine,
    profile_summary,
    render,
)
from queue_report import load_average
from stitchwork.config import Settings
from stitchwork.domain.claims import ClaimIndex, clear_caches
from stitchwork.domain.dag import critical_path
from stitchwork.domain.executions import Dispatch, ExecutionStatus
from stitchwork.domain.locks import LockMode, LockTable
from stitchwork.domain.plans import Plan, parse_plan
from stitchwork.runtime.engine import Engine
from stitchwork.services.executions import DEFAULT_REPO
from stitchwork.services.stitcher import NodeOutcome
from stitchwork.storage.tables import executions as executions_table
from stitchwork.storage.tables import job_events, runner_jobs

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ACTOR = "bench"
LEASE_OWNER = "bench"
JOBS_POLL_S = 0.05
PROFILE_TOP = 10

# The synthetic tree: src/mod{0..99}/file{0..99}.py and docs/page{0..49}.md.
MODULES = 100
FILES_PER_MODULE = 100
DOC_PAGES = 50
# (weight, kind). Mostly single files, so the DAG can progress; whole-module claims and globs
# make some nodes wait for others' locks.
CLAIM_KINDS = [(85, "file"), (5, "module subtree"), (3, "module glob"), (7, "docs")]
MODES = [(60, LockMode.WRITE), (30, LockMode.READ), (10, LockMode.ANALYSIS)]
# Held claims of the lock-table benchmark add a few claims that start with a wildcard: they sit
# at the index root and are compared with every request.
HELD_KINDS = [*CLAIM_KINDS, (1, "leading wildcard")]


def quiet_logging() -> None:
    """Benchmarks measure the scheduler, not log formatting: only warnings and errors print."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)


# -- workload ---------------------------------------------------------------------------------


def _pick(rng: random.Random, weighted: Sequence[tuple[int, Any]]) -> Any:
    return rng.choices([v for _, v in weighted], [w for w, _ in weighted])[0]


def random_claim(rng: random.Random, mode: LockMode, kinds: Sequence[tuple[int, str]]) -> str:
    kind = _pick(rng, kinds)
    module = f"src/mod{rng.randrange(MODULES)}"
    if kind == "file":
        return f"{module}/file{rng.randrange(FILES_PER_MODULE)}.py"
    if kind == "module subtree":
        return f"{module}/**"
    if kind == "module glob":
        return f"{module}/*.py"
    if kind == "docs":
        # Writers edit one page; readers read them all.
        return f"docs/page{rng.randrange(DOC_PAGES)}.md" if mode is LockMode.WRITE else "docs/*.md"
    return rng.choice(["**/*.md", "**/file7.py", "*/mod3/**"])


def random_request(
    rng: random.Random, kinds: Sequence[tuple[int, str]] = CLAIM_KINDS
) -> tuple[LockMode, list[str]]:
    mode = _pick(rng, MODES)
    return mode, [random_claim(rng, mode, kinds) for _ in range(rng.randint(1, 3))]


def plan_document(
    nodes: int, concurrency: int, seed: int, *, mode: LockMode | None = None, deps: bool = True
) -> str:
    """A plan as JSON text: node i depends on 0-3 random earlier nodes."""
    rng = random.Random(seed)
    doc = []
    for i in range(nodes):
        node_mode, claims = random_request(rng)
        if mode is not None:
            node_mode = mode
        k = min(i, rng.randint(0, 3)) if deps else 0
        doc.append(
            {
                "id": f"n{i:05d}",
                "type": "noop",
                "mode": node_mode.value,
                "claims": claims,
                "depends_on": [f"n{j:05d}" for j in sorted(rng.sample(range(i), k))],
            }
        )
    return json.dumps({"concurrency": concurrency, "nodes": doc})


def describe_plan(plan: Plan) -> dict[str, Any]:
    claims = [c for node in plan.nodes for c in node.claims]
    modes: dict[str, int] = {}
    for node in plan.nodes:
        modes[node.mode.value] = modes.get(node.mode.value, 0) + 1
    n = len(plan.nodes)
    return {
        "nodes": n,
        "concurrency": plan.concurrency,
        "edges": len(plan.edges),
        "roots": sum(not plan.dependencies(node.id) for node in plan.nodes),
        "critical_path": len(critical_path(plan)),
        "claims": len(claims),
        "claim_mix": ", ".join(f"{w}% {k}" for w, k in CLAIM_KINDS),
        "mode_mix": ", ".join(f"{k} {v / n:.0%}" for k, v in sorted(modes.items())),
    }


# -- pull mode --------------------------------------------------------------------------------


async def execution_events(engine: Engine, execution_id: uuid.UUID) -> dict[str, int]:
    stmt = (
        select(job_events.c.type, func.count())
        .where(job_events.c.execution_id == execution_id, job_events.c.job_id.is_(None))
        .group_by(job_events.c.type)
    )
    async with engine.db.read() as conn:
        return {str(t): int(n) for t, n in await conn.execute(stmt)}


async def node_job_events(engine: Engine, execution_id: uuid.UUID) -> dict[str, int]:
    jobs = select(runner_jobs.c.id).where(runner_jobs.c.execution_id == execution_id)
    stmt = (
        select(job_events.c.type, func.count())
        .where(job_events.c.job_id.in_(jobs))
        .group_by(job_events.c.type)
    )
    async with engine.db.read() as conn:
        return {str(t): int(n) for t, n in await conn.execute(stmt)}


async def take_and_complete(
    engine: Engine,
    workspace_id: uuid.UUID,
    execution_id: uuid.UUID,
    limit: int,
    *,
    batched: bool,
    calls: dict[str, list[float]],
) -> tuple[int, ExecutionStatus]:
    """One round of the orchestrator: take nodes while any may start (at most ``limit``), then
    complete them all. Single: one transaction per node and call; batched: one ``next_nodes``
    and one ``finish_nodes`` per round. Returns the nodes completed and the status."""
    executions = engine.executions
    taken: list[str] = []
    if batched:
        t0 = time.perf_counter()
        grants = await executions.next_nodes(
            workspace_id, execution_id, lease_owner=LEASE_OWNER, actor=ACTOR, limit=limit
        )
        calls["granted" if grants else "empty"].append(time.perf_counter() - t0)
        taken = [g.node_id for g in grants]
    while not batched and len(taken) < limit:
        t0 = time.perf_counter()
        grant = await executions.next_node(
            workspace_id, execution_id, lease_owner=LEASE_OWNER, actor=ACTOR
        )
        calls["granted" if grant else "empty"].append(time.perf_counter() - t0)
        if grant is None:
            break
        taken.append(grant.node_id)
    if not taken:
        raise RuntimeError(f"execution {execution_id} stuck: no node may start, none running")
    reports = [taken] if batched else [[node_id] for node_id in taken]
    for nodes in reports:
        t0 = time.perf_counter()
        done = await executions.finish_nodes(
            workspace_id, execution_id, [NodeOutcome(n, ok=True) for n in nodes], actor=ACTOR
        )
        calls["complete"].append(time.perf_counter() - t0)
    return len(taken), done.status


async def run_pull(
    engine: Engine,
    workspace_id: uuid.UUID,
    text: str,
    *,
    batched: bool = False,
    time_limit_s: float = 0,
) -> PullResult:
    """Drive one pull-mode execution to completion, round after round.

    With ``time_limit_s``, stop after the round that passes it (every taken node completed),
    abort the execution and report the nodes completed so far.
    """
    executions = engine.executions
    started = time.perf_counter()
    plan = parse_plan(text, format="json")
    parsed = time.perf_counter()
    ex = await executions.create(
        workspace_id, plan, actor=ACTOR, dispatch=Dispatch.PULL, start=True
    )
    created = time.perf_counter()
    calls: dict[str, list[float]] = {"granted": [], "empty": [], "complete": []}
    rounds = completed = 0
    status = ex.status
    deadline = created + time_limit_s if time_limit_s > 0 else None
    while status is ExecutionStatus.RUNNING:
        if deadline is not None and time.perf_counter() > deadline:
            break
        rounds += 1
        done, status = await take_and_complete(
            engine, workspace_id, ex.id, plan.concurrency, batched=batched, calls=calls
        )
        completed += done
    finished = time.perf_counter()
    if status is ExecutionStatus.RUNNING:  # stopped by the time limit
        await executions.abort(workspace_id, ex.id, actor=ACTOR)
    elif status is not ExecutionStatus.COMPLETED:
        raise RuntimeError(f"execution {ex.id} ended {status}")
    final = await executions.get(workspace_id, ex.id)
    return PullResult(
        mode="batched" if batched else "single",
        nodes=len(plan.nodes),
        completed=completed,
        concurrency=plan.concurrency,
        parse_s=parsed - started,
        create_s=created - parsed,
        loop_s=finished - created,
        next_granted=Latency.of(calls["granted"]),
        next_empty=Latency.of(calls["empty"]),
        complete=Latency.of(calls["complete"]),
        rounds=rounds,
        peak_concurrency=final.peak_concurrency,
        events=await execution_events(engine, ex.id),
        contended_nodes=sum(n.contentions > 0 for n in final.nodes),
        lock_wait_s=sum(n.lock_wait_s for n in final.nodes),
    )


async def profile_pull(
    engine: Engine, workspace_id: uuid.UUID, text: str, time_limit_s: float
) -> list[str]:
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        result = await run_pull(engine, workspace_id, text, time_limit_s=time_limit_s)
    finally:
        profiler.disable()
    wall_s = time.perf_counter() - started
    return profile_summary(profiler, result.completed, wall_s, PROFILE_TOP, result.nodes)


# -- jobs dispatch ----------------------------------------------------------------------------


async def run_jobs(
    engine: Engine, workspace_id: uuid.UUID, text: str, concurrency: int
) -> JobsResult:
    """One jobs-dispatch execution run by an in-process worker and scheduler."""
    worker = engine.worker(concurrency=concurrency)
    worker_task = asyncio.create_task(worker.run(), name="bench-worker")
    scheduler_task = asyncio.create_task(engine.scheduler(ACTOR).run(), name="bench-scheduler")
    try:
        plan = parse_plan(text, format="json")
        started = time.perf_counter()
        ex = await engine.executions.create(
            workspace_id, plan, actor=ACTOR, dispatch=Dispatch.JOBS, start=True
        )
        # Three columns: get() and find() decode and validate the whole plan on every call,
        # which would load this process more than the scheduler does.
        table = executions_table
        poll = select(table.c.status, table.c.started_at, table.c.completed_at).where(
            table.c.id == ex.id
        )
        while True:
            async with engine.db.read() as conn:
                row = (await conn.execute(poll)).one()
            if row.status not in (ExecutionStatus.RUNNING, ExecutionStatus.PLANNED):
                break
            if worker_task.done() or scheduler_task.done():
                raise RuntimeError("the worker or the scheduler stopped")
            await asyncio.sleep(JOBS_POLL_S)
        wall_s = time.perf_counter() - started
    finally:
        worker.stop()
        scheduler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler_task
        await worker_task
    if row.status != ExecutionStatus.COMPLETED:
        raise RuntimeError(f"execution {ex.id} ended {row.status}")
    return JobsResult(
        nodes=len(plan.nodes),
        concurrency=concurrency,
        wall_s=wall_s,
        db_s=(row.completed_at - row.started_at).total_seconds(),
        poll_s=JOBS_POLL_S,
        events=await execution_events(engine, ex.id),
        job_events=await node_job_events(engine, ex.id),
    )


# -- lock decisions ---------------------------------------------------------------------------


def fill_table(
    rng: random.Random, held: int, owners: int
) -> tuple[LockTable, list[tuple[str, LockMode]]]:
    """A table with ``held`` claims of ``owners`` owners; refused requests are drawn again."""
    table = LockTable()
    taken: list[tuple[str, LockMode]] = []
    per_owner = max(1, held // owners)
    owner = 0
    while len(taken) < held:
        mode = _pick(rng, MODES)
        want = min(per_owner, held - len(taken))
        claims = [(random_claim(rng, mode, HELD_KINDS), mode) for _ in range(want)]
        name = f"holder{owner % owners}"
        if not table.try_acquire(name, claims):
            owner += 1
            taken = [(h.claim, h.mode) for h in table.held()]
    return table, taken


def time_requests(
    requests: Sequence[tuple[str, list[tuple[str, LockMode]]]],
    decide: Callable[[str, list[tuple[str, LockMode]]], object],
    *,
    cold: bool,
) -> list[float]:
    samples = []
    for owner, claims in requests:
        if cold:
            clear_caches()
        t0 = time.perf_counter()
        decide(owner, claims)
        samples.append(time.perf_counter() - t0)
    return samples


def bench_lock_table(held: int, owners: int, requests: int, seed: int) -> LockTableResult:
    rng = random.Random(seed)
    table, holding = fill_table(rng, held, owners)
    batch = []
    for i in range(requests):
        mode, claims = random_request(rng, HELD_KINDS)
        batch.append((f"req{i}", [(c, mode) for c in claims]))

    def acquire(owner: str, claims: list[tuple[str, LockMode]]) -> bool:
        # The scheduler's decision: grant all, or refuse at the first conflict found.
        refused = bool(table.try_acquire(owner, claims, first=True))
        if not refused:
            table.release(owner)
        return refused

    refused = sum(acquire(owner, claims) for owner, claims in batch)
    index: ClaimIndex[int] = ClaimIndex()
    for i, (claim, _) in enumerate(holding):
        index.add(claim, i)
    candidates = statistics.fmean(
        sum(len(index.overlapping(c)) for c, _ in claims) for _, claims in batch
    )
    # Warm: every request's claims compiled and its pairs decided by an untimed pass first.
    conflicts_cold = time_requests(batch, table.conflicts, cold=True)
    time_requests(batch, table.conflicts, cold=False)
    conflicts_warm = time_requests(batch, table.conflicts, cold=False)
    acquire_cold = time_requests(batch, acquire, cold=True)
    time_requests(batch, acquire, cold=False)
    acquire_warm = time_requests(batch, acquire, cold=False)
    leading = [any(c.startswith("*") for c, _ in claims) for _, claims in batch]

    def split(samples: list[float], want: bool) -> Latency:
        return Latency.of([s for s, lead in zip(samples, leading, strict=True) if lead is want])

    return LockTableResult(
        held_claims=len(table.held()),
        owners=len(table.holders()),
        requests=requests,
        conflicting_share=refused / requests,
        candidates_avg=candidates,
        conflicts_cold=Latency.of(conflicts_cold),
        conflicts_warm=Latency.of(conflicts_warm),
        acquire_cold=Latency.of(acquire_cold),
        acquire_warm=Latency.of(acquire_warm),
        leading_requests=sum(leading),
        acquire_cold_leading=split(acquire_cold, True),
        acquire_warm_leading=split(acquire_warm, True),
        acquire_cold_other=split(acquire_cold, False),
        acquire_warm_other=split(acquire_warm, False),
    )


async def bench_persisted_locks(
    engine: Engine, workspace_id: uuid.UUID, holds: int, nodes: int, concurrency: int, seed: int
) -> PersistedLockResult:
    """``next_node`` with ``holds`` read holds on the repository, for read-mode nodes."""
    rng = random.Random(seed)
    executions = engine.executions
    started = time.perf_counter()
    for i in range(holds):
        claim = random_claim(rng, LockMode.READ, HELD_KINDS)
        await executions.hold(DEFAULT_REPO, f"h{i}", [(claim, LockMode.READ)])
    hold_s = time.perf_counter() - started
    plan = parse_plan(
        plan_document(nodes, concurrency, seed + 1, mode=LockMode.READ, deps=False), format="json"
    )
    ex = await executions.create(
        workspace_id, plan, actor=ACTOR, dispatch=Dispatch.PULL, start=True
    )
    granted: list[float] = []
    status = ex.status
    while status is ExecutionStatus.RUNNING:
        taken = []
        while len(taken) < concurrency:
            t0 = time.perf_counter()
            grant = await executions.next_node(
                workspace_id, ex.id, lease_owner=LEASE_OWNER, actor=ACTOR
            )
            if grant is None:
                break
            granted.append(time.perf_counter() - t0)
            taken.append(grant.node_id)
        if not taken:
            raise RuntimeError(f"execution {ex.id} stuck with {holds} read holds")
        for node_id in taken:
            status = (
                await executions.complete_node(workspace_id, ex.id, node_id, actor=ACTOR)
            ).status
    return PersistedLockResult(
        holds=holds, hold_s=hold_s, nodes=nodes, next_granted=Latency.of(granted)
    )


# -- databases --------------------------------------------------------------------------------


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


@contextlib.asynccontextmanager
async def open_engine(backend: str, pg_url: str) -> AsyncIterator[Engine]:
    """An engine on a fresh database: a temporary SQLite file or a fresh Postgres schema."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            tmp = Path(tempfile.mkdtemp(prefix="stitchwork-bench-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            url, search_path = f"sqlite+aiosqlite:///{tmp / 'bench.db'}", None
        else:
            url = make_url(pg_url).set(drivername="postgresql+asyncpg").render_as_string(False)
            search_path = await stack.enter_async_context(pg_schema(pg_url, "bench_sched"))
        engine = await Engine.open(Settings(database_url=url), search_path=search_path)
        stack.push_async_callback(engine.close)
        yield engine


async def postgres_version(pg_url: str) -> str:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        row = await (await conn.execute("SHOW server_version")).fetchone()
        return str(row[0]) if row else "unknown"


# -- entry point ------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> Report:
    load_before = load_average()  # other work on the machine skews every figure: show it
    pg_version = await postgres_version(args.pg_url) if args.backend == "postgres" else None
    text = plan_document(args.nodes, args.concurrency, args.seed)
    report = Report(
        backend=args.backend,
        machine=describe_machine(args.backend, pg_version, load_before),
        workload={"seed": args.seed, **describe_plan(parse_plan(text, format="json"))},
    )
    if args.held:
        print(
            f"[lock table] {args.requests:,} requests against {args.held:,} held claims ...",
            flush=True,
        )
        report.lock_table = bench_lock_table(args.held, args.owners, args.requests, args.seed)
    async with open_engine(args.backend, args.pg_url) as engine:
        ws, _ = await engine.auth.ensure_workspace("default")
        modes = ["single", "batched"] if args.pull == "both" else [args.pull]
        for run in range(1, args.repeat + 1):
            for mode in modes:
                print(
                    f"[pull/{args.backend}] {mode} run {run}: {args.nodes:,} nodes ...", flush=True
                )
                report.pull.append(
                    await run_pull(
                        engine,
                        ws.id,
                        text,
                        batched=mode == "batched",
                        time_limit_s=args.time_limit,
                    )
                )
        if args.profile:
            print(f"[pull/{args.backend}] profiled run ...", flush=True)
            report.profile = await profile_pull(engine, ws.id, text, args.profile_seconds)
        if args.job_nodes:
            print(f"[jobs/{args.backend}] {args.job_nodes:,} nodes ...", flush=True)
            jobs_text = plan_document(args.job_nodes, args.concurrency, args.seed + 2)
            report.jobs = await run_jobs(engine, ws.id, jobs_text, args.concurrency)
        if args.held:
            print(f"[persisted/{args.backend}] {args.held:,} holds ...", flush=True)
            report.persisted = await bench_persisted_locks(
                engine, ws.id, args.held, args.persisted_nodes, args.concurrency, args.seed
            )
    finish_machine(report.machine)
    print(render(report))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--nodes", type=int, default=10_000, help="pull-mode DAG size")
    parser.add_argument("--concurrency", type=int, default=16, help="the plans' concurrency")
    parser.add_argument(
        "--pull",
        choices=["single", "batched", "both"],
        default="both",
        help="single: next_node/complete_node per node (one transaction each); batched: "
        "next_nodes(limit=concurrency) and finish_nodes once per round",
    )
    parser.add_argument("--repeat", type=int, default=1, help="pull-mode runs (same plan)")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=600,
        help="seconds after which a pull run stops and reports the nodes completed so far "
        "(marked PARTIAL, its total projected); 0: no limit",
    )
    parser.add_argument(
        "--job-nodes", type=int, default=2_000, help="jobs-dispatch DAG size (0: skip)"
    )
    parser.add_argument("--held", type=int, default=1_000, help="held claims (0: skip locks)")
    parser.add_argument("--owners", type=int, default=500, help="owners of the held claims")
    parser.add_argument("--requests", type=int, default=10_000, help="lock-table requests")
    parser.add_argument(
        "--persisted-nodes", type=int, default=1_000, help="read nodes taken with holds"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile", action="store_true", help="add one profiled pull run (single calls)"
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=120, help="time limit of the profiled run"
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="libpq URL of the Postgres db")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    quiet_logging()
    outcome = asyncio.run(main(arguments))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(as_json(outcome), indent=2) + "\n")
