"""Figures and the printed report of ``bench/queue_bench.py``: results, percentiles, the machine."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sqlite3
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path

import psycopg

import stitchwork

THROUGHPUT_METHOD = "DB timestamps: jobs / (max completed_at - min started_at)"


@dataclass
class Result:
    """One system on one backend. Rates are jobs/s; latencies are enqueue-to-start, in ms."""

    system: str
    backend: str
    concurrency: int
    jobs: int
    submitted_per_s: float
    processed_per_s: float
    drain_s: float
    latency_mode: str
    latency_jobs: int
    offered_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Load:
    """The workload, the same for every system: bulk size, worker concurrency, offered rate."""

    jobs: int
    batch_size: int
    concurrency: int
    rate: float
    latency_s: float


FIGURES = (
    "submitted_per_s",
    "processed_per_s",
    "drain_s",
    "offered_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
)


def median_result(runs: Sequence[Result]) -> Result:
    """One system's runs folded into one: the median of every figure."""
    return replace(runs[0], **{f: statistics.median(getattr(r, f) for r in runs) for f in FIGURES})


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(latencies_ms: list[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    return {
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1],
    }


def throughput(starts: list[datetime], ends: list[datetime]) -> tuple[float, float]:
    """(jobs/s, seconds) from the first start to the last completion."""
    window = (max(ends) - min(starts)).total_seconds()
    return len(ends) / window, window


def stitchwork_source() -> str:
    """Which stitchwork was measured: its source folder and git commit (dirty or not)."""
    src = Path(stitchwork.__file__).resolve().parent
    try:
        commit, dirty = (
            subprocess.run(
                ["git", "-C", str(src), *cmd], capture_output=True, text=True, check=True
            ).stdout.strip()
            for cmd in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "--", "."])
        )
    except (OSError, subprocess.CalledProcessError):
        return str(src)
    return f"{src} @ {commit}{' + uncommitted changes' if dirty else ''}"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def cpu_and_ram() -> tuple[str, str]:
    """The CPU model and total memory, from /proc ("unknown" where it cannot be read)."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    return cpu, ram


def describe_machine(pg_version: str | None, load_before: str) -> dict[str, str]:
    cpu, ram = cpu_and_ram()
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("stitchwork", "procrastinate", "sqlalchemy", "asyncpg", "aiosqlite", "psycopg")
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version or "not used",
        "stitchwork": stitchwork_source(),
        "libraries": f"{versions} (psycopg libpq wrapper: {psycopg.pq.__impl__})",
        "load avg": f"before {load_before}; after {load_average()}",
    }


def report(machine: dict[str, str], load: Load, runs: list[list[Result]]) -> str:
    """The printed summary; with several runs, each figure is their median."""
    results = [median_result(same) for same in zip(*runs, strict=True)]
    lines = ["", "Machine"]
    lines += [f"  {key:<10} {value}" for key, value in machine.items()]
    lines += [
        "",
        f"Workload: {load.jobs} no-op jobs, bulk submit {load.batch_size}/call; one worker "
        f"process, concurrency {load.concurrency} (both libraries)",
        f"Processed jobs/s: {THROUGHPUT_METHOD}; Postgres tables ANALYZEd after the bulk submit",
        f"Latency: {load.rate:g} jobs/s offered one at a time for {load.latency_s:g} s to an "
        "idle worker; latency = started_at - queued_at (DB)",
        f"Runs: {len(runs)}" + (" (each figure is the median)" if len(runs) > 1 else ""),
        "",
    ]
    header = (
        f"{'system':<14}{'backend':<10}{'submit/s':>10}{'processed/s':>13}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  latency mode"
    )
    lines += [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.system:<14}{r.backend:<10}{r.submitted_per_s:>10,.0f}{r.processed_per_s:>13,.0f}"
            f"{r.p50_ms:>9.2f}{r.p90_ms:>9.2f}{r.p99_ms:>9.2f}{r.max_ms:>9.2f}  {r.latency_mode}"
            f" ({r.latency_jobs} jobs at {r.offered_per_s:.0f}/s ="
            f" {r.offered_per_s / r.processed_per_s:.0%} of its drain rate)"
        )
    if len(runs) > 1:
        lines += ["", f"Spread over {len(runs)} runs (min - max):"]
        for same in zip(*runs, strict=True):
            lines.append(
                f"  {same[0].system:<14}{same[0].backend:<10}"
                + "  ".join(
                    f"{name} {min(values):,.{digits}f} - {max(values):,.{digits}f}"
                    for name, digits, values in (
                        ("processed/s", 0, [r.processed_per_s for r in same]),
                        ("p50 ms", 2, [r.p50_ms for r in same]),
                        ("p99 ms", 1, [r.p99_ms for r in same]),
                    )
                )
            )
    by_key = {(r.system, r.backend): r for r in results}
    sw, pc = by_key.get(("stitchwork", "postgres")), by_key.get(("procrastinate", "postgres"))
    if sw and pc:
        lines += [
            "",
            "stitchwork / procrastinate on Postgres:",
            f"  submitted jobs/s  x{sw.submitted_per_s / pc.submitted_per_s:.2f}",
            f"  processed jobs/s  x{sw.processed_per_s / pc.processed_per_s:.2f}",
            f"  latency p50       x{sw.p50_ms / pc.p50_ms:.2f}  (below 1 = stitchwork faster)",
            f"  latency p99       x{sw.p99_ms / pc.p99_ms:.2f}",
        ]
    lines += ["", "Targets"]
    sqlite = by_key.get(("stitchwork", "sqlite"))
    if sqlite:
        lines.append(_target("SQLite processed jobs/s >= 1,000", sqlite.processed_per_s >= 1000))
    if sw and pc:
        lines.append(
            _target(
                "Postgres processed >= procrastinate's", sw.processed_per_s >= pc.processed_per_s
            )
        )
    for r in results:
        if r.system == "stitchwork":
            lines.append(_target(f"p50 latency <= 5 ms ({r.backend})", r.p50_ms <= 5))
    return "\n".join(lines)


def _target(name: str, met: bool) -> str:
    return f"  {'MET ' if met else 'MISS'}  {name}"
