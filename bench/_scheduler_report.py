"""Figures and the printed report of ``bench/scheduler.py``: latencies, the machine, targets."""

from __future__ import annotations

import contextlib
import cProfile
import os
import platform
import pstats
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from queue_report import load_average, percentile, stitchwork_source

OVERHEAD_TARGET_MS = 1.0  # per node, instant tasks, one process
LOCK_DECISION_TARGET_MS = 2.0  # p99 against 1,000 held claims
_ABORT_EVENTS = frozenset({"execution.aborted", "task.cancelled"})


@dataclass(frozen=True)
class Latency:
    """Milliseconds of one kind of call: how many, p50, p99 and the worst."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples_s: Sequence[float]) -> Latency:
        values = sorted(s * 1000 for s in samples_s)
        if not values:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(values), percentile(values, 50), percentile(values, 99), values[-1])

    def __str__(self) -> str:
        return (
            f"p50 {self.p50_ms:7.3f} ms  p99 {self.p99_ms:7.3f} ms  max {self.max_ms:8.3f} ms"
            f"  ({self.count:,} calls)"
        )


@dataclass
class PullResult:
    """One pull-mode execution driven to completion by an in-process orchestrator loop."""

    mode: str  # single (a transaction per node and call) or batched (two per round)
    nodes: int
    completed: int  # fewer than ``nodes`` when the time limit stopped the run
    concurrency: int
    parse_s: float  # parse_plan + validation of the JSON text
    create_s: float  # store the execution and its node rows, start it
    loop_s: float  # next/complete until the execution completed
    next_granted: Latency  # next_node / next_nodes calls that handed out nodes
    next_empty: Latency  # calls that handed out nothing (nothing may start now)
    complete: Latency  # complete_node / finish_nodes calls
    rounds: int  # take-until-None, then complete-all
    peak_concurrency: int
    events: dict[str, int]  # execution events by type
    contended_nodes: int  # nodes blocked by locks at least once
    lock_wait_s: float  # summed over nodes

    @property
    def partial(self) -> bool:
        return self.completed < self.nodes

    @property
    def total_s(self) -> float:
        """Parse + create + loop; for a partial run, the loop projected to every node."""
        return self.parse_s + self.create_s + self.loop_per_node_ms * self.nodes / 1000

    @property
    def per_node_ms(self) -> float:
        return self.total_s / self.nodes * 1000

    @property
    def loop_per_node_ms(self) -> float:
        return self.loop_s / max(1, self.completed) * 1000

    @property
    def events_per_node(self) -> float:
        """Events per completed node, without those of the abort that ends a partial run."""
        kept = {k: v for k, v in self.events.items() if k not in _ABORT_EVENTS}
        return sum(kept.values()) / max(1, self.completed)


@dataclass
class JobsResult:
    """One jobs-dispatch execution run by an in-process worker and scheduler."""

    nodes: int
    concurrency: int
    wall_s: float  # create(start=True) until the execution is seen completed
    db_s: float  # the execution's started_at -> completed_at
    poll_s: float
    events: dict[str, int]  # execution events by type
    job_events: dict[str, int]  # events of the nodes' jobs by type

    @property
    def per_node_ms(self) -> float:
        return self.wall_s / self.nodes * 1000


@dataclass
class LockTableResult:
    """The pure lock decision (``LockTable``) against held claims, cold and warm."""

    held_claims: int
    owners: int
    requests: int
    conflicting_share: float  # requests refused by try_acquire
    candidates_avg: float  # held claims whose overlap was decided per request (index hits)
    conflicts_cold: Latency
    conflicts_warm: Latency
    acquire_cold: Latency  # try_acquire (+ release when granted)
    acquire_warm: Latency
    # The same two, split: requests with a claim that starts with a wildcard (the index cannot
    # narrow those: every held claim is a candidate) and the others.
    leading_requests: int
    acquire_cold_leading: Latency
    acquire_warm_leading: Latency
    acquire_cold_other: Latency
    acquire_warm_other: Latency


@dataclass
class PersistedLockResult:
    """``next_node`` (one transaction) while 1,000 read holds sit on the repository."""

    holds: int
    hold_s: float
    nodes: int
    next_granted: Latency


@dataclass
class Report:
    backend: str
    machine: dict[str, str]
    workload: dict[str, Any]
    pull: list[PullResult] = field(default_factory=list)
    jobs: JobsResult | None = None
    lock_table: LockTableResult | None = None
    persisted: PersistedLockResult | None = None
    profile: list[str] = field(default_factory=list)


def describe_machine(backend: str, pg_version: str | None, load_before: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("sqlalchemy", "aiosqlite", "asyncpg")
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version or "not used",
        "backend": backend,
        "stitchwork": stitchwork_source(),
        "libraries": versions,
        "load avg": f"before {load_before}",
    }


def finish_machine(machine: dict[str, str]) -> None:
    machine["load avg"] += f"; after {load_average()}"


def _target(name: str, value: float, limit: float) -> str:
    return f"  {'MET ' if value <= limit else 'MISS'}  {name}: {value:.3f} ms (target <= {limit:g})"


def render(report: Report) -> str:
    lines = ["", "Machine"]
    lines += [f"  {key:<10} {value}" for key, value in report.machine.items()]
    w = report.workload
    lines += [
        "",
        f"Workload: {w['nodes']:,}-node DAG, seed {w['seed']}, deps 0-3 to random earlier nodes "
        f"({w['edges']:,} edges, {w['roots']:,} roots, critical path {w['critical_path']} nodes); "
        f"{w['claims']:,} claims ({w['claim_mix']}); modes {w['mode_mix']}; "
        f"concurrency {w['concurrency']}",
    ]
    targets: list[str] = []
    for i, r in enumerate(report.pull, 1):
        how = (
            "next_nodes(limit=concurrency) + finish_nodes: two transactions per round"
            if r.mode == "batched"
            else "next_node + complete_node: one transaction per node and call"
        )
        done = (
            f"PARTIAL: stopped by the time limit after {r.completed:,} of {r.nodes:,} nodes; "
            "the total projects the loop's per-node time to every node"
            if r.partial
            else f"all {r.nodes:,} nodes completed"
        )
        lines += [
            "",
            f"Pull mode run {i}, {r.mode}: instant tasks, one process, {how}",
            f"  {done}",
            f"  parse + validate plan   {r.parse_s:9.3f} s",
            f"  create + start          {r.create_s:9.3f} s",
            f"  next/complete loop      {r.loop_s:9.3f} s   ({r.loop_per_node_ms:.3f} ms/node)",
            f"  total{' (projected)' if r.partial else '            '}      {r.total_s:9.3f} s"
            f"   overhead {r.per_node_ms:.3f} ms/node",
            f"  next (granted)    {r.next_granted}",
            f"  next (nothing)    {r.next_empty}",
            f"  complete          {r.complete}",
            f"  rounds {r.rounds:,}; peak concurrency {r.peak_concurrency}; "
            f"{r.contended_nodes:,} nodes blocked by locks at least once "
            f"(lock wait {r.lock_wait_s:.2f} s summed)",
            f"  events {sum(r.events.values()):,} = {r.events_per_node:.2f}/node: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(r.events.items())),
        ]
        what = "projected from a partial run" if r.partial else "total / nodes"
        targets.append(
            _target(
                f"overhead per node, pull run {i}, {r.mode} ({what})",
                r.per_node_ms,
                OVERHEAD_TARGET_MS,
            )
        )
    if report.jobs is not None:
        j = report.jobs
        lines += [
            "",
            f"Jobs dispatch: {j.nodes:,} nodes of job type noop, in-process worker "
            f"(concurrency {j.concurrency}) + scheduler, completion polled every {j.poll_s:g} s",
            f"  wall {j.wall_s:.3f} s = {j.per_node_ms:.3f} ms/node; "
            f"execution started_at -> completed_at {j.db_s:.3f} s",
            "  execution events "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(j.events.items()))
            + f"; job events {sum(j.job_events.values()):,} "
            + f"({sum(j.job_events.values()) / j.nodes:.1f}/node)",
        ]
    if report.lock_table is not None:
        t = report.lock_table
        lines += [
            "",
            f"Lock decisions (pure LockTable): {t.held_claims:,} held claims by {t.owners} "
            f"owners; {t.requests:,} random requests of 1-3 claims, "
            f"{t.conflicting_share:.0%} refused; {t.candidates_avg:.1f} overlapping held "
            "claims found per request",
            "  cold = claim caches cleared before every request (compile + decide afresh); "
            "try_acquire stops at the first conflict (first=True), as the scheduler does",
            f"  conflicts()            cold  {t.conflicts_cold}",
            f"  conflicts()            warm  {t.conflicts_warm}",
            f"  try_acquire+release    cold  {t.acquire_cold}",
            f"  try_acquire+release    warm  {t.acquire_warm}",
            f"  of which the {t.leading_requests:,} requests with a claim starting with a "
            "wildcard (no index narrowing):",
            f"    try_acquire+release  cold  {t.acquire_cold_leading}",
            f"    try_acquire+release  warm  {t.acquire_warm_leading}",
            "  and the others:",
            f"    try_acquire+release  cold  {t.acquire_cold_other}",
            f"    try_acquire+release  warm  {t.acquire_warm_other}",
        ]
        targets += [
            _target(
                "lock decision p99, cold (try_acquire+release)",
                t.acquire_cold.p99_ms,
                LOCK_DECISION_TARGET_MS,
            ),
            _target(
                "lock decision p99, warm (try_acquire+release)",
                t.acquire_warm.p99_ms,
                LOCK_DECISION_TARGET_MS,
            ),
        ]
    if report.persisted is not None:
        p = report.persisted
        lines += [
            "",
            f"Persisted lock decision: next_node (one transaction: lock rows, choose, write "
            f"node, lock rows, events) with {p.holds:,} read holds on the repository "
            f"(taken in {p.hold_s:.2f} s), {p.nodes:,} read-mode nodes",
            f"  next (granted)    {p.next_granted}",
        ]
        targets.append(
            f"  info  persisted next_node p99 with {p.holds:,} holds: "
            f"{p.next_granted.p99_ms:.3f} ms (a whole transaction; not the target's measure)"
        )
    if report.profile:
        lines += ["", *report.profile]
    lines += ["", "Targets", *targets]
    return "\n".join(lines)


def as_json(report: Report) -> dict[str, Any]:
    """The report as plain data, with the derived figures and the target verdicts."""
    data = asdict(report)
    for raw, r in zip(data["pull"], report.pull, strict=True):
        raw |= {
            "partial": r.partial,
            "total_s": r.total_s,
            "per_node_ms": r.per_node_ms,
            "loop_per_node_ms": r.loop_per_node_ms,
            "events_per_node": r.events_per_node,
        }
    if report.jobs is not None:
        data["jobs"]["per_node_ms"] = report.jobs.per_node_ms
    data["targets"] = {
        "overhead_ms_per_node": {
            "target": OVERHEAD_TARGET_MS,
            "values": [r.per_node_ms for r in report.pull],
            "met": all(r.per_node_ms <= OVERHEAD_TARGET_MS for r in report.pull),
        },
    }
    if report.lock_table is not None:
        p99 = max(report.lock_table.acquire_cold.p99_ms, report.lock_table.acquire_warm.p99_ms)
        data["targets"]["lock_decision_p99_ms"] = {
            "target": LOCK_DECISION_TARGET_MS,
            "cold": report.lock_table.acquire_cold.p99_ms,
            "warm": report.lock_table.acquire_warm.p99_ms,
            "met": p99 <= LOCK_DECISION_TARGET_MS,
        }
    return data


def profile_summary(
    profiler: cProfile.Profile, nodes: int, wall_s: float, top: int, plan_nodes: int
) -> list[str]:
    """Where the time of a profiled run goes: own time by package, then the top stitchwork
    functions by cumulative and by own time (per completed node, in microseconds)."""
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = {}
    rows = []
    others = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        package = _package(filename)
        by_package[package] = by_package.get(package, 0.0) + tottime
        if package == "stitchwork":
            where = filename.split("/stitchwork/", 1)[-1]
            rows.append((f"{where}:{line}({name})", ncalls, tottime, cumtime))
        else:
            where = name if filename == "~" else f"{Path(filename).name}:{line}({name})"
            others.append((where, ncalls, tottime, cumtime))
    total = sum(by_package.values())
    lines = [
        f"Profile (cProfile of the event loop's thread; SQLite calls run inline on it, Postgres "
        "round trips show as waiting): "
        f"{nodes:,} of {plan_nodes:,} nodes completed in {wall_s:.2f} s under the profiler "
        "(calls of async functions count every resumption)",
        "  own time by package: "
        + ", ".join(
            f"{name} {t:.2f} s ({t / total:.0%})"
            for name, t in sorted(by_package.items(), key=lambda kv: -kv[1])
            if t / total >= 0.01
        ),
    ]
    for title, index, table in (
        ("stitchwork functions by cumulative", 3, rows),
        ("stitchwork functions by own", 2, rows),
        ("functions outside stitchwork by own", 2, others),
    ):
        lines.append(f"  top {top} {title} time (us per completed node):")
        lines.append(f"    {'cum us':>8} {'own us':>8} {'calls':>9}  function")
        for where, ncalls, tottime, cumtime in sorted(table, key=lambda r: -r[index])[:top]:
            per_node = f"{cumtime / nodes * 1e6:8.1f} {tottime / nodes * 1e6:8.1f}"
            lines.append(f"    {per_node} {ncalls:9,}  {where}")
    return lines


def _package(filename: str) -> str:
    if "/stitchwork/" in filename:
        return "stitchwork"
    for name in ("sqlalchemy", "aiosqlite", "asyncpg", "structlog", "asyncio", "json", "uuid"):
        if f"/{name}/" in filename or filename.endswith(f"/{name}.py"):
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    return "other"
