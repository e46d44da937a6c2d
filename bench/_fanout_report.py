"""Figures of a bench/fanout.py run: computed from the clients' files, printed, checked."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import subprocess
from array import array
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

TARGET_P99_MS = 250.0
TARGET_RATE_SHARE = 0.95  # the producer must reach 95% of --rate: a slowed job hides latency


@dataclass
class Run:
    """What the orchestrator measured itself, besides the clients' result files."""

    job_id: str
    outs: list[Path]
    connected: int
    connect_s: float
    idle_cpu: float  # share of a core, all subscribers connected, no events
    rss_kb: dict[str, int]
    server_cpu_s: float
    wall_s: float
    others_cpu_s: float
    health_ms: list[float]  # /healthz response times during the run
    health_errors: int


def build_report(
    args: argparse.Namespace, run: Run, events: list[dict[str, Any]], server_log: str
) -> dict[str, Any]:
    results = [json.loads(o.read_text()) for o in run.outs]
    by_kind: dict[str, list[float]] = {"sse": [], "ws": []}
    for out, (kind, latencies) in itertools.product(run.outs, by_kind.items()):
        chunk = array("d")
        chunk.frombytes(out.with_suffix(f".{kind}.lat").read_bytes())
        latencies += chunk.tolist()
    for latencies in by_kind.values():
        latencies.sort()
    latencies = sorted(by_kind["sse"] + by_kind["ws"])
    streams = [s for r in results for s in r["streams"]]
    final_seq = events[-1]["seq"] if events else 0
    outputs = [e for e in events if e["type"] == "step.output"]
    emit_s = _span_s(outputs[0]["created_at"], outputs[-1]["created_at"]) if outputs else 0.0
    rate = round((len(outputs) - 1) / emit_s, 1) if emit_s else 0.0
    timed = len(latencies)
    window_s = max(r["last_received"] for r in results) - min(r["first_created"] for r in results)
    completed = [s for s in streams if s["complete"]]
    errors = sorted({s["error"] for s in streams if s["error"]})
    clients_cpu_s = sum(r["cpu_s"] for r in results)
    clients_wall_s = max(r["wall_s"] for r in results)
    health = sorted(run.health_ms)
    report: dict[str, Any] = {
        "machine": machine(),
        "backend": args.backend,
        "subscribers": {"sse": args.sse, "ws": args.ws, "connected": run.connected},
        "client_processes": args.procs,
        "connect_s": round(run.connect_s, 2),
        "job": {
            "status": events[-1]["type"] if events else "?",
            "events": final_seq,
            "step_output_events": len(outputs),
            "target_rate_per_s": args.rate,
            "achieved_rate_per_s": rate,
        },
        "delivered_events": sum(s["events"] for s in streams),
        "timed_events": timed,
        "delivered_per_s": round(timed / window_s) if timed else 0,
        "needed_per_s": round(args.rate * (args.sse + args.ws)),
        "latency_ms": _quantiles(latencies),
        "latency_ms_sse": _quantiles(by_kind["sse"]),
        "latency_ms_ws": _quantiles(by_kind["ws"]),
        "gaps": sum(s["gaps"] for s in streams),
        "missing_at_end": sum(final_seq - s["last_seq"] for s in completed),
        "duplicates": sum(s["duplicates"] for s in streams),
        "streams_completed": len(completed),
        "stream_errors": sum(1 for s in streams if s["error"]),
        "first_errors": errors[:5],
        "slowest_events": slowest_events(results, events),
        "server_subscribers_dropped": server_log.count("subscriber_dropped"),
        "server_rss_mb": {k: round(v / 1024, 1) for k, v in run.rss_kb.items()},
        "server_cpu_pct_of_core": round(100 * run.server_cpu_s / run.wall_s),
        "server_idle_cpu_pct_of_core": round(100 * run.idle_cpu),
        "server_cpu_us_per_delivery": round(1e6 * run.server_cpu_s / timed, 1) if timed else None,
        "clients_cpu_pct_of_core": round(100 * clients_cpu_s / clients_wall_s),
        "other_processes_cpu_pct_of_core": round(100 * run.others_cpu_s / run.wall_s),
        "healthz_ms": {
            "p50": _percentile(health, 0.5),
            "max": _percentile(health, 1.0),
            "errors": run.health_errors,
        },
    }
    report["target_misses"] = target_misses(args, report)
    report["target_met"] = not report["target_misses"]
    return report


def _span_s(first: str, last: str) -> float:
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, ``+dirty`` with uncommitted changes under src/."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return commit + ("+dirty" if dirty else "")


def print_report(r: dict[str, Any]) -> None:
    m, job, lat, rss, subs = (
        r["machine"],
        r["job"],
        r["latency_ms"],
        r["server_rss_mb"],
        r["subscribers"],
    )
    lines = [
        f"machine    {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GB RAM, Python {m['python']}, "
        f"stitchwork {m['code']}; "
        f"other processes used {r['other_processes_cpu_pct_of_core']}% of a core meanwhile",
        f"setup      {r['backend']}; {subs['sse']} SSE + {subs['ws']} WS subscribers in "
        f"{r['client_processes']} client processes; {subs['connected']} connected in "
        f"{r['connect_s']} s; server CPU with all of them idle: "
        f"{r['server_idle_cpu_pct_of_core']}% of a core",
        f"producer   {job['step_output_events']} step.output events at "
        f"{job['achieved_rate_per_s']}/s (target {job['target_rate_per_s']:g}/s); last event "
        f"{job['status']} (seq {job['events']})",
        f"delivered  {r['delivered_events']:,} events; {r['timed_events']:,} live (timed) at "
        f"{r['delivered_per_s']:,}/s (needed {r['needed_per_s']:,}/s)",
        f"latency    p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
        f"max {lat['max']} ms (receive time - created_at); SSE p50 "
        f"{r['latency_ms_sse']['p50']} / p99 {r['latency_ms_sse']['p99']} ms, WS p50 "
        f"{r['latency_ms_ws']['p50']} / p99 {r['latency_ms_ws']['p99']} ms",
        f"sequence   gaps {r['gaps']}, missing at end {r['missing_at_end']}, duplicates "
        f"{r['duplicates']}; {r['streams_completed']}/{subs['sse'] + subs['ws']} streams "
        f"completed, {r['stream_errors']} errors, {r['server_subscribers_dropped']} "
        "subscribers dropped by the server",
        f"server     RSS idle {rss['idle']} MB, connected {rss['connected']} MB, peak "
        f"{rss['peak_sampled']} MB (VmHWM {rss['peak_hwm']} MB); CPU "
        f"{r['server_cpu_pct_of_core']}% of a core, {r['server_cpu_us_per_delivery']} us per "
        f"delivered event; /healthz p50 {r['healthz_ms']['p50']} ms, max "
        f"{r['healthz_ms']['max']} ms",
        f"clients    CPU {r['clients_cpu_pct_of_core']}% of a core (all processes together)",
        "target     " + ("met" if r["target_met"] else "NOT met: " + "; ".join(r["target_misses"])),
    ]
    lines.append(
        "slowest    "
        + ", ".join(
            f"seq {e['seq']} {e['type']} at +{e['at_s']} s: {e['max_ms']} ms"
            for e in r["slowest_events"]
        )
    )
    lines += [f"  error: {error}" for error in r["first_errors"]]
    print("\n".join(lines))


def slowest_events(
    results: list[dict[str, Any]], events: list[dict[str, Any]], count: int = 5
) -> list[dict[str, Any]]:
    """The events with the highest latency to any subscriber: which, and when in the run."""
    worst: dict[int, float] = {}
    for result in results:
        for seq, latency_ms in result["worst_ms"].items():
            worst[int(seq)] = max(latency_ms, worst.get(int(seq), 0.0))
    by_seq = {e["seq"]: e for e in events}
    live = [by_seq[seq] for seq in worst if seq in by_seq]
    if not live:
        return []
    start = min(datetime.fromisoformat(e["created_at"]) for e in live)
    return [
        {
            "seq": seq,
            "type": by_seq[seq]["type"],
            "at_s": round(
                (datetime.fromisoformat(by_seq[seq]["created_at"]) - start).total_seconds(), 2
            ),
            "max_ms": round(worst[seq], 1),
        }
        for seq in sorted(worst, key=worst.__getitem__, reverse=True)[:count]
        if seq in by_seq
    ]


def target_misses(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    """Why the run misses the target (p99 <= 250 ms at the full rate, nothing lost)."""
    total = args.sse + args.ws
    checks = [
        (r["subscribers"]["connected"] == total, f"{r['subscribers']['connected']} connected"),
        (r["streams_completed"] == total, f"{r['streams_completed']} streams completed"),
        (
            r["job"]["achieved_rate_per_s"] >= TARGET_RATE_SHARE * args.rate,
            f"producer below {TARGET_RATE_SHARE:.0%} of the rate",
        ),
        ((r["latency_ms"]["p99"] or 0) <= TARGET_P99_MS, f"p99 > {TARGET_P99_MS:g} ms"),
        (r["gaps"] == r["missing_at_end"] == 0, "events lost"),
        (r["duplicates"] == 0, "duplicates"),
    ]
    return [why for ok, why in checks if not ok]


def _quantiles(ordered: list[float]) -> dict[str, float | None]:
    quantiles = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "max": 1.0}
    return {name: _percentile(ordered, q) for name, q in quantiles.items()}


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values, rounded to 0.1; None when there are none."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 1)
