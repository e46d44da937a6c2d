"""Figures and the printed report of ``bench/peers.py``."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata

from queue_report import cpu_and_ram, load_average, percentile, stitchwork_source

METHOD = (
    "Workers up and idle first. Then one producer process enqueues --jobs jobs in calls of "
    "--batch-size (each library's bulk call where it has one) while the workers run.\n"
    "  jobs/s = jobs / (last job finished - first enqueue call); drain/s = jobs / (last job "
    "finished - first job started); enqueue/s = the producer's own rate.\n"
    "  Latency: then --rate jobs/s are enqueued one at a time for --latency-seconds to the "
    "idle workers; latency = job start (taken in the job) - enqueue time (carried in the job's "
    "args/data), both time.time() on this machine. stitchwork: started_at of its runner_jobs "
    "row (the worker's transition to running) - the time carried in the payload."
)


@dataclass
class Outcome:
    """One system's figures. Rates are jobs/s; latencies are enqueue-to-start, in ms."""

    system: str
    workers: str
    jobs: int
    enqueue_per_s: float
    jobs_per_s: float
    drain_per_s: float
    latency_jobs: int
    offered_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms_per_job: float  # the worker processes' own CPU time (not Redis's or Postgres's)


@dataclass(frozen=True)
class Record:
    """One job, as its worker saw it: ``time.time()`` seconds."""

    phase: str
    enqueued: float
    started: float
    finished: float


def outcome(
    system: str,
    workers: str,
    bulk: list[Record],
    latency: list[Record],
    first_enqueue: float,
    enqueue_s: float,
    offered_per_s: float,
    worker_cpu_s: float,
) -> Outcome:
    last = max(r.finished for r in bulk)
    delays = sorted((r.started - r.enqueued) * 1000 for r in latency)
    return Outcome(
        system=system,
        workers=workers,
        jobs=len(bulk),
        enqueue_per_s=len(bulk) / enqueue_s,
        jobs_per_s=len(bulk) / (last - first_enqueue),
        drain_per_s=len(bulk) / (last - min(r.started for r in bulk)),
        latency_jobs=len(delays),
        offered_per_s=offered_per_s,
        p50_ms=percentile(delays, 50),
        p90_ms=percentile(delays, 90),
        p99_ms=percentile(delays, 99),
        max_ms=delays[-1],
        cpu_ms_per_job=worker_cpu_s * 1000 / len(bulk),
    )


def describe_machine(
    redis_version: str, pg_version: str, arq_version: str | None
) -> dict[str, str]:
    cpu, ram = cpu_and_ram()
    names = ("bullmq", "saq", "rq", "celery", "kombu", "redis", "sqlalchemy", "asyncpg")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    if arq_version:
        versions += f"; arq {arq_version} (own venv)"
    return {
        "cpu": f"{cpu}, {platform.machine()}",
        "ram": ram,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": f"{redis_version}, local TCP",
        "postgres": pg_version,
        "stitchwork": stitchwork_source(),
        "libraries": versions,
    }


def report(
    machine: dict[str, str],
    load_before: str,
    settings: str,
    outcomes: list[Outcome],
    failures: dict[str, str],
) -> str:
    lines = ["", "Machine"]
    lines += [f"  {key:<11}{value}" for key, value in machine.items()]
    lines += [f"  {'load avg':<11}before {load_before}; after {load_average()}", ""]
    lines += ["Method", f"  {METHOD}", f"  {settings}", ""]
    header = (
        f"{'system':<12}{'enqueue/s':>10}{'jobs/s':>9}{'drain/s':>9}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}{'cpu ms':>8}{'sw/peer':>9}  workers"
    )
    lines += [header, "-" * len(header)]
    sw = next((o for o in outcomes if o.system == "stitchwork"), None)
    for o in outcomes:
        ratio = f"x{sw.jobs_per_s / o.jobs_per_s:.2f}" if sw and o is not sw else "-"
        lines.append(
            f"{o.system:<12}{o.enqueue_per_s:>10,.0f}{o.jobs_per_s:>9,.0f}{o.drain_per_s:>9,.0f}"
            f"{o.p50_ms:>9.2f}{o.p90_ms:>9.2f}{o.p99_ms:>9.2f}{o.max_ms:>9.2f}"
            f"{o.cpu_ms_per_job:>8.2f}{ratio:>9}"
            f"  {o.workers}"
        )
    for system, error in failures.items():
        lines.append(f"{system:<12}FAILED: {error}")
    lines += [
        "",
        "sw/peer: stitchwork's jobs/s divided by the peer's (above 1: stitchwork is faster).",
        "cpu ms: CPU time of the worker processes per job, enqueue + drain phase (Redis's and "
        "Postgres's own CPU not included).",
        "Latency phase, the rate each producer reached (and as a share of that system's drain "
        "rate): "
        + ", ".join(
            f"{o.system} {o.offered_per_s:.0f}/s ({o.offered_per_s / o.drain_per_s:.0%})"
            for o in outcomes
        ),
    ]
    by_name = {o.system: o for o in outcomes}
    lines += ["", "Targets (issue 6)"]
    for peer, factor in (("saq", 1.0), ("arq", 5.0)):
        if sw and peer in by_name:
            ratio = sw.jobs_per_s / by_name[peer].jobs_per_s
            met = "MET " if ratio >= factor else "MISS"
            lines.append(f"  {met}  stitchwork jobs/s >= {factor:g} x {peer}'s: x{ratio:.2f}")
        else:
            lines.append(f"  n/a   stitchwork jobs/s >= {factor:g} x {peer}'s (not both measured)")
    return "\n".join(lines)
