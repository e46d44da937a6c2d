"""Figures and the printed report of ``bench/runner.py``: per-job overhead, the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from queue_report import load_average, percentile, stitchwork_source

OVERHEAD_TARGET_S = 1.5  # per job, agent and gate time excluded, 10,000-file repository
WORKTREE_CREATE_TARGET_S = 1.0  # "well under a second"
SANDBOX_TARGET_S = 0.05  # added per command by bubblewrap
PARALLEL_TARGET_JOBS = 8
PARALLEL_TARGET_CORES = 2


@dataclass(frozen=True)
class Spread:
    """Seconds of one figure over several samples: p50 (nearest rank), the worst, the best."""

    count: int
    p50_s: float
    max_s: float
    min_s: float

    @classmethod
    def of(cls, samples_s: Sequence[float]) -> Spread:
        values = sorted(samples_s)
        if not values:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(values), percentile(values, 50), values[-1], values[0])

    def __str__(self) -> str:
        return f"p50 {self.p50_s:6.3f} s  max {self.max_s:6.3f} s  min {self.min_s:6.3f} s"


@dataclass
class JobFigures:
    """One agent task, from its job row, its steps and the merge-lock instrumentation.

    ``overhead_s`` = total - agent - gates = setup + commit_merge + cleanup + between.
    """

    index: int
    job_id: str
    directory: str  # the only directory the task edits (its claim)
    status: str
    error: str | None
    failed_step: str | None
    merged: bool
    total_s: float  # job started_at -> completed_at
    agent_s: float  # its ai_action step(s)
    gates_s: float  # wall time of its gate steps (the gates of an attempt run in parallel)
    gates_summed_s: float
    setup_s: float  # "prepare worktree"
    commit_merge_s: float  # "commit and merge"
    cleanup_s: float  # "clean up worktree"
    between_s: float  # outside every step: job start and finish, changed_paths, step records
    lock_wait_s: float | None  # waiting for the repository's merge lock
    lock_held_s: float | None  # integrating under it

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.agent_s - self.gates_s

    @property
    def outside_lock_s(self) -> float | None:
        """Commit and merge outside the merge lock: the commit, checks, the step's output."""
        if self.lock_wait_s is None or self.lock_held_s is None:
            return None
        return self.commit_merge_s - self.lock_wait_s - self.lock_held_s


@dataclass
class RunFigures:
    """A batch of agent tasks run by one in-process worker."""

    name: str
    jobs: int
    concurrency: int
    wall_s: float  # worker started (or first submit) -> every job seen terminal (polled)
    db_window_s: float  # min(started_at) -> max(completed_at)
    per_job: list[JobFigures]
    landed: int  # tasks whose edit is on main afterwards
    errors: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)  # stitchwork warnings/errors logged

    def spread(self, name: str) -> Spread:
        """One figure over the completed jobs (a failed job skips steps: not comparable)."""
        done = [j for j in self.per_job if j.status == "completed"]
        values = [v for j in done if (v := getattr(j, name)) is not None]
        return Spread.of(values)

    @property
    def ok(self) -> bool:
        return not self.errors and self.landed == self.jobs


@dataclass
class WorktreeFigures:
    """Bare ``Worktrees`` calls on the 10,000-file repository, outside any job."""

    repeats: int
    create: Spread
    changed_paths: Spread  # one edited file
    commit: Spread  # that file
    remove: Spread  # worktree and branch


@dataclass
class SandboxFigures:
    """One command (``true``) started by ``run_process`` as a gate or an agent starts it:
    unconfined, and in a task's sandbox (bwrap, the task's walls, no network)."""

    repeats: int
    plain: Spread
    sandboxed: Spread
    sandbox: str  # what confined it ("bwrap 0.8.0"), or why nothing could

    @property
    def added_p50_s(self) -> float:
        return self.sandboxed.p50_s - self.plain.p50_s


@dataclass
class Report:
    machine: dict[str, str]
    workload: dict[str, Any]
    sandbox: SandboxFigures | None = None
    worktrees: WorktreeFigures | None = None
    sequential: RunFigures | None = None
    parallel: RunFigures | None = None

    @property
    def failed(self) -> bool:
        return any(r is not None and not r.ok for r in (self.sequential, self.parallel))


def git_version() -> str:
    try:
        out = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip().removeprefix("git version ")


def filesystem_of(path: Path) -> str:
    """The mount point and file-system type holding ``path`` (git's speed depends on it)."""
    best = ("?", "unknown")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = path == Path(mount) or path.is_relative_to(mount)
            if inside and len(mount) >= len(best[0]):
                best = (mount, parts[2])
    return f"{best[1]} (mounted at {best[0]})"


def pressure() -> str:
    """CPU and I/O pressure (PSI, share of the last 10 s some task waited): on a shared
    machine, other work shows here before it shows in the figures."""
    parts = []
    for kind in ("cpu", "io"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            first = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0]
            fields = dict(f.split("=", 1) for f in first.split()[1:])
            parts.append(f"{kind} {float(fields['avg10']):.0f}%")
    return ", ".join(parts) or "unavailable"


def describe_machine(load_before: str, pressure_before: str) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    tmp = Path(tempfile.gettempdir()).resolve()
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable by this process and its git/gate children)",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "git": git_version(),
        "sqlite": sqlite3.sqlite_version,
        "temp dir": f"{tmp}: {filesystem_of(tmp)}",
        "stitchwork": stitchwork_source(),
        "load avg": f"before {load_before}",
        "pressure": f"before {pressure_before}",
    }


def finish_machine(machine: dict[str, str]) -> None:
    machine["load avg"] += f"; after {load_average()}"
    machine["pressure"] += f"; after {pressure()} (PSI some, avg10)"


def _target(name: str, met: bool, value: str) -> str:
    return f"  {'MET ' if met else 'MISS'}  {name}: {value}"


def _run_lines(run: RunFigures) -> list[str]:
    lines = [
        f"  {run.jobs} jobs, worker concurrency {run.concurrency}: wall {run.wall_s:.3f} s "
        f"(polled); first start -> last completion {run.db_window_s:.3f} s (DB); "
        f"{run.landed}/{run.jobs} edits on main afterwards",
        f"  job total            {run.spread('total_s')}",
        f"  agent (ai_action)    {run.spread('agent_s')}",
        f"  gates (wall)         {run.spread('gates_s')}",
        f"  overhead             {run.spread('overhead_s')}   = total - agent - gates:",
        f"    prepare worktree   {run.spread('setup_s')}",
        f"    commit and merge   {run.spread('commit_merge_s')}",
    ]
    if run.spread("lock_wait_s").count:
        lines += [
            f"      merge lock wait  {run.spread('lock_wait_s')}",
            f"      merge lock held  {run.spread('lock_held_s')}   (integration: reset "
            "the integration worktree, merge, update-ref)",
            f"      the rest         {run.spread('outside_lock_s')}   (commit on the job "
            "branch, checks, step output)",
        ]
    lines += [
        f"    clean up worktree  {run.spread('cleanup_s')}",
        f"    between steps      {run.spread('between_s')}   (claim + finish of the job, "
        "changed_paths before the gates, step records)",
        "",
        "     #  dir   total  agent  gates  overhead  prepare  commit+merge (lock wait)  "
        "clean up  between  status",
    ]
    for j in run.per_job:
        wait = "" if j.lock_wait_s is None else f"({j.lock_wait_s:5.2f})"
        lines.append(
            f"    {j.index:2d}  {j.directory:<4} {j.total_s:6.2f} {j.agent_s:6.2f} {j.gates_s:6.2f}"
            f" {j.overhead_s:9.2f} {j.setup_s:8.2f} {j.commit_merge_s:13.2f} {wait:>11} "
            f"{j.cleanup_s:9.2f} {j.between_s:8.2f}  {j.status}"
            + ("" if j.merged else " (not merged)")
        )
    if run.warnings:
        lines.append(
            "  stitchwork logged warnings/errors: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(run.warnings.items()))
        )
    for error in run.errors:
        lines.append(f"  ERROR {error}")
    return lines


def render(report: Report) -> str:
    lines = ["", "Machine"]
    lines += [f"  {key:<10} {value}" for key, value in report.machine.items()]
    w = report.workload
    lines += [
        "",
        f"Workload: a repository of {w['files']:,} files in {w['dirs']} directories "
        f"(built in {w['build_s']:.2f} s by git fast-import; checkout on {w['checkout']!r}, "
        f"tasks land on {w['target']!r} with strategy merge); gates: {w['gates']}. Each task "
        "is a script agent writing one file in its own directory, claims <dir>/**. "
        "SQLite job store, in-process worker; figures from the job and step rows.",
    ]
    targets: list[str] = []
    if report.worktrees is not None:
        t = report.worktrees
        lines += [
            "",
            f"Bare Worktrees calls on the {w['files']:,}-file repository ({t.repeats} times each)",
            f"  create         {t.create}",
            f"  changed_paths  {t.changed_paths}   (one edited file)",
            f"  commit         {t.commit}",
            f"  remove         {t.remove}   (worktree and branch)",
        ]
        median = t.create.p50_s
        targets.append(
            _target(
                "Worktrees.create under a second, p50 (the issue: well under)",
                median < WORKTREE_CREATE_TARGET_S,
                f"best {t.create.min_s:.3f} s, p50 {median:.3f} s "
                f"(target < {WORKTREE_CREATE_TARGET_S:g} s)",
            )
        )
    if report.sequential is not None:
        run = report.sequential
        lines += ["", "Sequential: one job at a time", *_run_lines(run)]
        overhead = run.spread("overhead_s")
        first = run.per_job[0] if run.per_job else None
        if first is not None and len(run.per_job) > 1:
            rest = Spread.of([j.overhead_s for j in run.per_job[1:] if j.status == "completed"])
            lines.append(
                f"  job 1 also creates the repository's integration worktree (a full checkout, "
                "under the merge lock); "
                f"jobs 2-{len(run.per_job)} overhead: {rest}"
            )
        targets += [
            _target(
                "runner overhead per job, p50 (sequential)",
                overhead.p50_s <= OVERHEAD_TARGET_S,
                f"{overhead.p50_s:.3f} s (target <= {OVERHEAD_TARGET_S:g} s)",
            ),
            _target(
                "runner overhead per job, every job (sequential max)",
                overhead.max_s <= OVERHEAD_TARGET_S,
                f"{overhead.max_s:.3f} s (target <= {OVERHEAD_TARGET_S:g} s)",
            ),
        ]
        if not run.ok:
            targets.append(_target("sequential jobs without errors", False, _failures(run)))
    if report.parallel is not None:
        run = report.parallel
        lines += ["", "Parallel: every job submitted at once, then the worker started"]
        lines += _run_lines(run)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        on = f"{run.jobs} parallel jobs on {cores} cores without errors"
        shape = run.jobs >= PARALLEL_TARGET_JOBS and cores <= PARALLEL_TARGET_CORES
        note = "" if shape else f" (the target is {PARALLEL_TARGET_JOBS} on 2 cores)"
        targets.append(
            _target(on + note, run.ok and shape, "all landed" if run.ok else _failures(run))
        )
        targets.append(
            f"  info  overhead per job, parallel: {run.spread('overhead_s')} "
            "(includes waiting for the CPU and the merge lock)"
        )
    if report.sandbox is not None:
        box = report.sandbox
        lines += [
            "",
            f"One command (`true`) through run_process, {box.repeats} times each ({box.sandbox})",
            f"  unconfined     {box.plain}",
            f"  sandboxed      {box.sandboxed}",
        ]
        targets.append(
            _target(
                "the sandbox adds under 50 ms per command, p50",
                box.added_p50_s < SANDBOX_TARGET_S,
                f"{box.added_p50_s * 1000:.1f} ms (target < {SANDBOX_TARGET_S * 1000:g} ms)",
            )
        )
    lines += ["", "Targets", *targets]
    return "\n".join(lines)


def _failures(run: RunFigures) -> str:
    return f"{len(run.errors)} error(s), {run.landed}/{run.jobs} landed"


def as_json(report: Report) -> dict[str, Any]:
    """The report as plain data, with derived figures and the target verdicts."""
    data = asdict(report)
    for key in ("sequential", "parallel"):
        run = getattr(report, key)
        if run is None:
            continue
        for raw, job in zip(data[key]["per_job"], run.per_job, strict=True):
            raw["overhead_s"] = job.overhead_s
            raw["outside_lock_s"] = job.outside_lock_s
        data[key]["summary"] = {
            name: asdict(run.spread(name))
            for name in (
                "total_s",
                "agent_s",
                "gates_s",
                "overhead_s",
                "setup_s",
                "commit_merge_s",
                "cleanup_s",
                "between_s",
                "lock_wait_s",
                "lock_held_s",
                "outside_lock_s",
            )
        }
        data[key]["ok"] = run.ok
    targets: dict[str, Any] = {}
    if report.sequential is not None:
        overhead = report.sequential.spread("overhead_s")
        targets["overhead_s_per_job"] = {
            "target": OVERHEAD_TARGET_S,
            "p50": overhead.p50_s,
            "max": overhead.max_s,
            "met_p50": overhead.p50_s <= OVERHEAD_TARGET_S,
            "met_every_job": overhead.max_s <= OVERHEAD_TARGET_S,
        }
    if report.parallel is not None:
        targets["parallel_without_errors"] = {
            "jobs": report.parallel.jobs,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "met": report.parallel.ok,
        }
    if report.worktrees is not None:
        targets["worktree_create_s"] = {
            "target": WORKTREE_CREATE_TARGET_S,
            "p50": report.worktrees.create.p50_s,
            "best": report.worktrees.create.min_s,
            "met": report.worktrees.create.p50_s < WORKTREE_CREATE_TARGET_S,
        }
    if report.sandbox is not None:
        targets["sandbox_added_s_per_command"] = {
            "target": SANDBOX_TARGET_S,
            "p50": report.sandbox.added_p50_s,
            "met": report.sandbox.added_p50_s < SANDBOX_TARGET_S,
        }
    data["targets"] = targets
    data["failed"] = report.failed
    return data
