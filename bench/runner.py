"""Runner benchmark: the per-job overhead of ``agent-task`` on a repository of 10,000 files.

The overhead is what the runner adds around the agent and the gates: the worktree, the steps'
records, the commit, the merge and the clean-up. Every figure comes from the job's row
(``started_at`` -> ``completed_at``) and its steps' rows: overhead = total - the ``ai_action``
step(s) - the wall time of the ``gate`` steps (the gates of an attempt run in parallel).

* A repository of ``--files`` small files in ``--dirs`` directories is written as one commit by
  ``git fast-import``; its ``stitchwork.toml`` has one trivial gate (``true``) in the rails of
  agent-task, so the gate machinery runs (with the built-in claims gate) but takes no time.
  The user's checkout is on ``dev``: tasks land on ``main``, which must not be checked out.
* Bare ``Worktrees`` calls (create, changed_paths, commit, remove), ``--worktree-repeat`` times.
* Sequential: ``--jobs`` script-agent tasks one at a time through a real in-process worker
  (SQLite job store), each editing one file of its own directory (claims ``<dir>/**``).
* Parallel: ``--parallel`` tasks submitted at once, then a worker of that concurrency; every
  one must complete and land (otherwise the errors print and the exit status is 1).
* Sandbox: one command (``true``) started ``--command-repeat`` times as a gate starts it,
  unconfined and in a task's bubblewrap sandbox: what confinement adds per command. The jobs
  above run sandboxed too (``STITCHWORK_SANDBOX=auto``), as they do by default.

The merge lock's wait and hold times are measured by wrapping (not replacing)
``stitchwork.runner.merge.repo_lock`` and the lander's ``integrate`` for the run.

Run: ``.venv/bin/python bench/runner.py [--jobs 10] [--parallel 8] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select

from _runner_report import (
    JobFigures,
    Report,
    RunFigures,
    SandboxFigures,
    Spread,
    WorktreeFigures,
    as_json,
    describe_machine,
    finish_machine,
    pressure,
    render,
)
from queue_report import load_average
from stitchwork.config import Settings
from stitchwork.domain.jobs import TERMINAL_JOB_STATUSES, JobStatus, NewJob
from stitchwork.domain.steps import Step, StepStatus, StepType
from stitchwork.runner import landing, merge
from stitchwork.runner.process import run_process
from stitchwork.runner.sandbox import Confinement
from stitchwork.runner.worktrees import Worktrees
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import runner_jobs

ACTOR = "bench"
TARGET = "main"
CHECKOUT = "dev"
GATE = "trivial"
POLL_S = 0.1
STOP_TIMEOUT_S = 60
REPO_CONFIG = f"""max_gate_attempts = 1

[gates.{GATE}]
command = "true"
timeout = 60

[quality_rails]
agent-task = ["{GATE}"]
"""
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def quiet_logging(logged: Counter[str]) -> None:
    """Only warnings and errors print, and each is counted by event name: a run that logged
    ``handler_crashed`` or ``worktree_cleanup_failed`` did not go without errors."""

    def count(_logger: Any, _method: str, event: Any) -> Any:
        logged[str(event.get("event"))] += 1
        return event

    processors = [count, *structlog.get_config()["processors"]]
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        processors=processors,
    )
    logging.basicConfig(level=logging.WARNING)


# -- the repository ---------------------------------------------------------------------------


def run_git(repo: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        env={**os.environ, **GIT_ENV},
        input=data,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def file_path(directory: int, files_per_dir: int, n: int = 0) -> str:
    return f"d{directory:03d}/f{directory * files_per_dir + n:05d}.txt"


def build_repo(path: Path, files: int, dirs: int) -> None:
    """One commit of ``files`` small files in ``dirs`` directories and ``stitchwork.toml`` on
    ``main``, written by ``git fast-import``; the checkout is then on ``dev``."""
    path.mkdir()
    run_git(path, "init", "-q", "-b", TARGET)
    per_dir = -(-files // dirs)
    stream = [
        b"commit refs/heads/main\ncommitter bench <bench@localhost> 0 +0000\ndata 7\nfixture\n"
    ]
    entries = [("stitchwork.toml", REPO_CONFIG.encode())]
    for i in range(files):
        directory, n = divmod(i, per_dir)
        text = f"file {i} of the benchmark repository\n" + "".join(
            f"line {k}: some content\n" for k in range(4)
        )
        entries.append((file_path(directory, per_dir, n), text.encode()))
    for name, content in entries:
        stream.append(f"M 100644 inline {name}\ndata {len(content)}\n".encode() + content + b"\n")
    run_git(path, "fast-import", "--quiet", data=b"".join(stream))
    run_git(path, "checkout", "-q", "-f", "-b", CHECKOUT, TARGET)


def on_main(repo: Path, path: str) -> str | None:
    try:
        return run_git(repo, "cat-file", "-p", f"{TARGET}:{path}")
    except subprocess.CalledProcessError:
        return None


def registered_worktrees(repo: Path) -> set[str]:
    """The directory names of every worktree registered in the repository."""
    out = run_git(repo, "worktree", "list", "--porcelain")
    return {Path(line[9:]).name for line in out.splitlines() if line.startswith("worktree ")}


# -- bare worktrees ---------------------------------------------------------------------------


async def bench_worktrees(
    repo: Path, work_root: Path, repeats: int, per_dir: int
) -> WorktreeFigures:
    worktrees = Worktrees(work_root)
    times: dict[str, list[float]] = {"create": [], "changed": [], "commit": [], "remove": []}
    for i in range(repeats):
        t0 = time.perf_counter()
        wt = await worktrees.create(repo, f"bare-{i}", target_branch=TARGET)
        t1 = time.perf_counter()
        (wt.path / file_path(0, per_dir, i % per_dir)).write_text(f"bare edit {i}\n")
        changes = await worktrees.changed_paths(wt)
        t2 = time.perf_counter()
        commit = await worktrees.commit(wt, f"bare edit {i}")
        t3 = time.perf_counter()
        await worktrees.remove(wt, delete_branch=True)
        t4 = time.perf_counter()
        if len(changes) != 1 or commit is None:
            raise RuntimeError(f"bare worktree {i}: {len(changes)} changes, commit {commit}")
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(value)
    return WorktreeFigures(
        repeats=repeats,
        create=Spread.of(times["create"]),
        changed_paths=Spread.of(times["changed"]),
        commit=Spread.of(times["commit"]),
        remove=Spread.of(times["remove"]),
    )


# -- merge lock instrumentation ---------------------------------------------------------------

_integrating: contextvars.ContextVar[str | None] = contextvars.ContextVar("job", default=None)


@contextlib.contextmanager
def timed_merge_lock(samples: dict[str, list[tuple[float, float]]]) -> Iterator[None]:
    """Record (wait, hold) seconds of every merge-lock acquisition, by job id.

    ``integrate`` looks ``repo_lock`` up in its module at call time and the runner looks
    ``integrate`` up in its own; both wrappers call the real function.
    """
    real_lock, real_integrate = merge.repo_lock, landing.integrate

    async def integrate(repo: Path, wt: Any, **kwargs: Any) -> Any:
        token = _integrating.set(wt.job_id)
        try:
            return await real_integrate(repo, wt, **kwargs)
        finally:
            _integrating.reset(token)

    @contextlib.asynccontextmanager
    async def repo_lock(lock_dir: Path, root: Path) -> AsyncIterator[None]:
        asked = time.perf_counter()
        async with real_lock(lock_dir, root):
            got = time.perf_counter()
            try:
                yield
            finally:
                held = time.perf_counter() - got
                samples.setdefault(_integrating.get() or "?", []).append((got - asked, held))

    merge.repo_lock, landing.integrate = repo_lock, integrate  # type: ignore[assignment]
    try:
        yield
    finally:
        merge.repo_lock, landing.integrate = real_lock, real_integrate


# -- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One agent task: it rewrites ``path`` in ``directory`` and claims that directory."""

    index: int
    directory: str
    path: str
    content: str

    def new_job(self, repo: Path) -> NewJob:
        payload = {
            "repo": str(repo),
            "prompt": f"Bench task {self.index}: edit {self.path}",
            "claims": [f"{self.directory}/**"],
            "script": [{"write": self.path, "content": self.content}],
        }
        return NewJob("agent-task", payload, max_attempts=1)


def make_tasks(run: str, first: int, count: int, dirs: int, per_dir: int) -> list[Task]:
    return [
        Task(
            index=i + 1,
            directory=f"d{(first + i) % dirs:03d}",
            path=file_path((first + i) % dirs, per_dir, i % per_dir),
            content=f"edited by {run} task {i + 1}\n",
        )
        for i in range(count)
    ]


async def wait_terminal(
    engine: Engine, ids: Sequence[uuid.UUID], deadline: float, worker: asyncio.Task[None]
) -> bool:
    """Poll until every job is terminal (True) or the deadline passes (False)."""
    done_values = [s.value for s in TERMINAL_JOB_STATUSES]
    stmt = select(func.count()).where(
        runner_jobs.c.id.in_(ids), runner_jobs.c.status.in_(done_values)
    )
    while True:
        async with engine.db.read() as conn:
            if (await conn.execute(stmt)).scalar_one() == len(ids):
                return True
        if worker.done():
            worker.result()  # raises what stopped it
            raise RuntimeError("the worker stopped by itself")
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)


def busy_s(intervals: Sequence[tuple[float, float]]) -> float:
    """The wall time covered by possibly overlapping intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def interval(step: Step) -> tuple[float, float] | None:
    if step.started_at is None or step.completed_at is None:
        return None
    return step.started_at.timestamp(), step.completed_at.timestamp()


async def job_figures(
    engine: Engine,
    ws: uuid.UUID,
    task: Task,
    job_id: uuid.UUID,
    locks: dict[str, list[tuple[float, float]]],
) -> JobFigures:
    job = await engine.store.get_job(job_id)
    steps = await engine.jobs.steps(ws, job_id)
    spans: dict[str, list[tuple[float, float]]] = {}
    for step in steps:
        span = interval(step)
        if span is None:
            continue
        kind = {StepType.AI_ACTION: "agent", StepType.GATE: "gate"}.get(step.type, step.name)
        spans.setdefault(kind, []).append(span)
    total = 0.0
    if job.started_at is not None and job.completed_at is not None:
        total = (job.completed_at - job.started_at).total_seconds()
    agent, gates = busy_s(spans.get("agent", [])), busy_s(spans.get("gate", []))
    setup = busy_s(spans.get("prepare worktree", []))
    commit_merge = busy_s(spans.get("commit and merge", []))
    cleanup = busy_s(spans.get("clean up worktree", []))
    held = locks.get(str(job_id))
    failed = [s.name for s in steps if s.status is StepStatus.FAILED]
    return JobFigures(
        index=task.index,
        job_id=str(job_id),
        directory=task.directory,
        status=job.status.value,
        error=job.error,
        failed_step=failed[0] if failed else None,
        merged=bool((job.result or {}).get("merged")),
        total_s=total,
        agent_s=agent,
        gates_s=gates,
        gates_summed_s=sum(b - a for a, b in spans.get("gate", [])),
        setup_s=setup,
        commit_merge_s=commit_merge,
        cleanup_s=cleanup,
        between_s=total - agent - gates - setup - commit_merge - cleanup,
        lock_wait_s=sum(w for w, _ in held) if held else None,
        lock_held_s=sum(h for _, h in held) if held else None,
    )


async def run_tasks(
    engine: Engine,
    ws: uuid.UUID,
    repo: Path,
    name: str,
    tasks: Sequence[Task],
    *,
    concurrency: int,
    at_once: bool,
    timeout_s: float,
    logged: Counter[str],
) -> RunFigures:
    """Run ``tasks`` through an in-process worker: one at a time, or all submitted before
    the worker starts (``at_once``). Errors are collected, never raised."""
    locks: dict[str, list[tuple[float, float]]] = {}
    before = Counter(logged)
    errors: list[str] = []
    ids: list[uuid.UUID] = []
    deadline = time.monotonic() + timeout_s
    started = time.perf_counter()
    with timed_merge_lock(locks):
        if at_once:
            submitted = await engine.jobs.submit_many(
                ws, [t.new_job(repo) for t in tasks], actor=ACTOR
            )
            ids = [s.job.id for s in submitted]
            started = time.perf_counter()
        worker = engine.worker(concurrency=concurrency)
        worker_task = asyncio.create_task(worker.run(), name=f"bench-worker-{name}")
        try:
            ended = True
            if at_once:
                ended = await wait_terminal(engine, ids, deadline, worker_task)
            else:
                for task in tasks:
                    new = task.new_job(repo)
                    ids.append((await engine.jobs.submit(ws, new, actor=ACTOR)).job.id)
                    ended = await wait_terminal(engine, ids[-1:], deadline, worker_task)
                    if not ended:
                        break
            if not ended:
                errors.append(f"not every job ended within {timeout_s:g} s")
        except Exception as exc:  # a bug in stitchwork: report it with the figures we have
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            wall = time.perf_counter() - started
            worker.stop()
            try:
                await asyncio.wait_for(worker_task, STOP_TIMEOUT_S)
            except Exception as exc:
                errors.append(f"the worker did not stop cleanly: {type(exc).__name__}: {exc}")
    per_job = [await job_figures(engine, ws, t, i, locks) for t, i in zip(tasks, ids, strict=False)]
    landed = 0
    leftovers = registered_worktrees(repo)
    if len(per_job) < len(tasks):
        errors.append(f"{len(tasks) - len(per_job)} task(s) never submitted")
    for task, job in zip(tasks, per_job, strict=False):
        if job.status != JobStatus.COMPLETED.value or not job.merged:
            where = f" in step {job.failed_step!r}" if job.failed_step else ""
            errors.append(f"task {task.index} ({job.job_id}) {job.status}{where}: {job.error}")
        if on_main(repo, task.path) == task.content.strip():
            landed += 1
        elif job.status == JobStatus.COMPLETED.value:
            errors.append(f"task {task.index} completed but its edit of {task.path} is not on main")
        if job.job_id in leftovers and job.status == JobStatus.COMPLETED.value:
            errors.append(f"task {task.index} completed but left its worktree registered")
    jobs = [job for i in ids if (job := await engine.store.get_job(i)).started_at]
    window = 0.0
    if jobs and all(j.completed_at for j in jobs):
        window = (
            max(j.completed_at for j in jobs if j.completed_at)
            - min(j.started_at for j in jobs if j.started_at)
        ).total_seconds()
    return RunFigures(
        name=name,
        jobs=len(tasks),
        concurrency=concurrency,
        wall_s=wall,
        db_window_s=window,
        per_job=per_job,
        landed=landed,
        errors=errors,
        warnings=dict(logged - before),
    )


# -- entry point ------------------------------------------------------------------------------


def make_temp_dir() -> Path:
    # Resolved: worktree paths are compared with what git reports, which resolves symlinks.
    return Path(tempfile.mkdtemp(prefix="stitchwork-bench-runner-")).resolve()


@contextlib.asynccontextmanager
async def open_engine(data_dir: Path) -> AsyncIterator[Engine]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{data_dir / 'bench.db'}",
        data_dir=data_dir,
        work_dir=data_dir / "work",
        repo_roots=[data_dir.parent],  # the benchmark's repository lives beside its data
    )
    engine = await Engine.open(settings)
    try:
        yield engine
    finally:
        await engine.close()


async def bench_sandbox(engine: Engine, repo: Path, repeats: int) -> SandboxFigures:
    """``true`` through ``run_process``, unconfined and in a task's sandbox (the walls of a
    gate: the worktree writable, ``.git`` readable, the data dir and roots hidden)."""
    confinement = engine.confinement
    walls = Confinement(writable=(repo,), readonly=(repo / ".git",), network=False)
    wrap = confinement.wrapper(walls, repo)
    env = confinement.env()
    times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
    for _ in range(repeats):
        for name, how in (("plain", None), ("sandboxed", wrap)):
            t0 = time.perf_counter()
            done = await run_process(["true"], cwd=repo, env=env, wrap=how)
            times[name].append(time.perf_counter() - t0)
            assert done.returncode == 0, done.output_tail
    problem = confinement.sandbox.problem()
    version = await asyncio.to_thread(
        subprocess.run, ["bwrap", "--version"], capture_output=True, text=True, check=False
    )
    what = problem or (version.stdout.strip() if wrap is not None else "sandbox off")
    return SandboxFigures(repeats, Spread.of(times["plain"]), Spread.of(times["sandboxed"]), what)


async def main(args: argparse.Namespace, logged: Counter[str]) -> Report:
    # Other work on the machine skews every figure: show it.
    load_before, pressure_before = load_average(), pressure()
    tmp = make_temp_dir()
    try:
        repo = tmp / "repo"
        print(f"[repo] {args.files:,} files in {args.dirs} directories ...", flush=True)
        t0 = time.perf_counter()
        build_repo(repo, args.files, args.dirs)
        # Write the fixture's dirty pages back now, not during the timed worktrees and jobs.
        os.sync()
        per_dir = -(-args.files // args.dirs)
        report = Report(
            machine=describe_machine(load_before, pressure_before),
            workload={
                "files": args.files,
                "dirs": args.dirs,
                "build_s": time.perf_counter() - t0,
                "checkout": CHECKOUT,
                "target": TARGET,
                "gates": f"claims (built in) + {GATE} (command `true`)",
            },
        )
        if args.worktree_repeat:
            print(f"[worktrees] bare calls x{args.worktree_repeat} ...", flush=True)
            report.worktrees = await bench_worktrees(
                repo, tmp / "bare-work", args.worktree_repeat, per_dir
            )
        async with open_engine(tmp / "data") as engine:
            ws, _ = await engine.auth.ensure_workspace("default")
            if args.command_repeat:
                print(f"[sandbox] one command x{args.command_repeat} ...", flush=True)
                report.sandbox = await bench_sandbox(engine, repo, args.command_repeat)
            if args.jobs:
                print(f"[sequential] {args.jobs} jobs ...", flush=True)
                report.sequential = await run_tasks(
                    engine,
                    ws.id,
                    repo,
                    "sequential",
                    make_tasks("sequential", 0, args.jobs, args.dirs, per_dir),
                    concurrency=1,
                    at_once=False,
                    timeout_s=args.timeout,
                    logged=logged,
                )
            if args.parallel:
                print(f"[parallel] {args.parallel} jobs at once ...", flush=True)
                report.parallel = await run_tasks(
                    engine,
                    ws.id,
                    repo,
                    "parallel",
                    make_tasks("parallel", args.jobs, args.parallel, args.dirs, per_dir),
                    concurrency=args.parallel,
                    at_once=True,
                    timeout_s=args.timeout,
                    logged=logged,
                )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    finish_machine(report.machine)
    print(render(report))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=10_000, help="files in the repository")
    parser.add_argument("--dirs", type=int, default=100, help="directories holding them")
    parser.add_argument("--jobs", type=int, default=10, help="sequential tasks (0: skip)")
    parser.add_argument(
        "--parallel", type=int, default=8, help="tasks submitted at once = worker concurrency"
    )
    parser.add_argument(
        "--worktree-repeat", type=int, default=5, help="bare Worktrees calls (0: skip)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds a run may take before it fails"
    )
    parser.add_argument(
        "--command-repeat",
        type=int,
        default=50,
        help="commands timed unconfined and sandboxed (0: skip)",
    )
    parser.add_argument(
        "--cpus",
        type=int,
        default=0,
        help="pin the bench and its git/gate processes to this many CPUs (0: as started)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.parallel > args.dirs:
        parser.error("--parallel needs a directory per task: at most --dirs")
    if min(args.files, args.dirs) < 1 or args.dirs > 1000:
        parser.error("--files and --dirs must be positive, --dirs at most 1000")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: arguments.cpus])
    counted: Counter[str] = Counter()
    quiet_logging(counted)
    outcome = asyncio.run(main(arguments, counted))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(as_json(outcome), indent=2) + "\n")
    sys.exit(1 if outcome.failed else 0)
