"""Fan-out benchmark: one ``stitchwork serve`` process streaming one busy job to many clients.

The target: ONE API process (a real ``stitchwork serve`` subprocess, API + worker, on a free
port with its own data directory and database) delivers a job emitting ``--rate`` events per
second for ``--seconds`` to ``--sse`` SSE and ``--ws`` WebSocket subscribers with p99 delivery
latency <= 250 ms, the producer at (95% of) its rate, and nothing lost or doubled.

How it runs:

1. start the server; pause the ``default`` queue; submit one ``emit`` job (it stays queued);
2. start ``--procs`` client processes (this script with ``--role client``, see
   ``_fanout_client.py``); each opens its share of the subscriptions with asyncio and reports
   ready once every stream delivered the job's backfill (so its live subscription exists);
3. wait until the server settles (at most 20 s; its CPU use then is reported as the cost of
   idle subscribers), then resume the queue: every event the job writes is live for everyone;
4. each client checks each stream's ``seq`` for gaps and duplicates as the events arrive and
   keeps their receive time; after the run it times every event: receive time - the event's
   ``created_at`` (same machine, same clock); backfilled events are checked but not timed.
   The clients are lean (bare asyncio protocols, bytes parsing, each distinct read parsed once
   per process: ``_fanout_client.py``) because they share the machine with the server.

Meanwhile the server's RSS (``/proc/<pid>/status``) and CPU time are sampled, ``/healthz`` is
timed, and the CPU used by other processes on the machine is reported (it competes with the
server). ``STITCHWORK_*`` variables reach the server, e.g. ``STITCHWORK_SUBSCRIBER_BUFFER``.
Everything started here is stopped and every temporary file, directory or database is removed
at the end, on Ctrl+C too. ``--profile out.txt`` records the server with py-spy and prints
where its event loop spends its time (``_folded.py``).

Run: ``.venv/bin/python bench/fanout.py`` (500 SSE + 500 WS, 100 events/s for 30 s); a quick
check: ``.venv/bin/python bench/fanout.py --sse 20 --ws 20 --seconds 5 --procs 2``.
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from _fanout_client import CLIENT_KEY_ENV, CONNECT_TIMEOUT_S, cpu_s, raise_fd_limit, run_client
from _fanout_report import Run, build_report, print_report

SCRIPT = str(Path(__file__).resolve())
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
START_TIMEOUT_S = 60.0
SAMPLE_INTERVAL_S = 0.1
HEALTH_INTERVAL_S = 0.5
STOP_GRACE_S = 10.0
SETTLE_WINDOW_S = 2.0
SETTLE_MAX_CPU = 0.1  # of a core
SETTLE_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Samples a process's RSS (for its peak) and times ``/healthz`` (the loop's lag)."""

    def __init__(self, pid: int, url: str) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pid = pid
        self.url = url
        self.peak_rss_kb = 0
        self.health_ms: list[float] = []
        self.health_errors = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        next_health = 0.0
        with httpx.Client(timeout=30) as http:
            while not self._stopping.is_set():
                self.peak_rss_kb = max(self.peak_rss_kb, proc_status_kb(self.pid, "VmRSS"))
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + HEALTH_INTERVAL_S
                    started = time.perf_counter()
                    try:
                        http.get(f"{self.url}/healthz").raise_for_status()
                        self.health_ms.append((time.perf_counter() - started) * 1000)
                    except httpx.HTTPError:
                        self.health_errors += 1
                self._stopping.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def proc_status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB; 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def settle(pid: int) -> tuple[float, float]:
    """Wait (at most ``SETTLE_TIMEOUT_S``) until the process uses almost no CPU: a client has
    its first event before the server finished setting its stream up, and that work must not
    count against the first live events. Returns the seconds waited and the CPU use (share of
    a core) in the last window: what the server spends with every subscriber idle."""
    started = time.monotonic()
    while True:
        before = proc_cpu_s(pid)
        time.sleep(SETTLE_WINDOW_S)
        idle_cpu = (proc_cpu_s(pid) - before) / SETTLE_WINDOW_S
        if idle_cpu < SETTLE_MAX_CPU or time.monotonic() - started >= SETTLE_TIMEOUT_S:
            return time.monotonic() - started, idle_cpu


def system_busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``), for spotting other load."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Bench:
    """Owns every process, file and database the run creates, and removes them in ``close``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="stitchwork-fanout-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pg_database: str | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.key = ""

    # -- lifecycle --

    def close(self) -> None:
        self.stop_profiler()
        for proc in reversed(self.procs):  # clients first, the server last
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            if self.pg_database is not None:
                self._pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
        finally:
            if self.args.keep:
                print(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def _spawn(
        self, argv: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.tmp / log_name, "wb") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl+C reaches only this script, which stops them
            )
        self.procs.append(proc)
        return proc

    def _pg_admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.args.pg_url, autocommit=True) as conn:
            conn.execute(statement.encode())

    def _log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.tmp / name).read_text().splitlines()[-lines:])
        return ""

    # -- steps --

    def start_server(self) -> None:
        env = {
            **os.environ,
            "STITCHWORK_DATA_DIR": str(self.tmp / "data"),
            "STITCHWORK_LOG_LEVEL": "info",  # subscriber_dropped is logged at info
        }
        if self.args.backend == "postgres":
            from sqlalchemy.engine import make_url

            self.pg_database = f"sw_fanout_{uuid.uuid4().hex[:10]}"
            self._pg_admin(f'CREATE DATABASE "{self.pg_database}"')
            url = make_url(self.args.pg_url).set(drivername="postgresql+asyncpg")
            url = url.set(database=self.pg_database)
            env["STITCHWORK_DATABASE_URL"] = url.render_as_string(hide_password=False)
        else:
            env["STITCHWORK_DATABASE_URL"] = f"sqlite+aiosqlite:///{self.tmp / 'fanout.db'}"
        argv = [sys.executable, "-m", "stitchwork.cli.main", "serve", "--port", "0"]
        self.server = self._spawn(argv, "server.log", env)
        credentials = self.tmp / "data" / "credentials.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not credentials.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self._log_tail('server.log')}")
            time.sleep(0.05)
        stored = json.loads(credentials.read_text())
        self.url, self.key = stored["api_url"], stored["api_key"]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"}
        response = httpx.request(
            method, f"{self.url}/api/v1{path}", headers=headers, timeout=60, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def submit_paused_job(self) -> str:
        self.api("POST", "/queues/default/pause")
        count = round(self.args.rate * self.args.seconds)
        job = self.api(
            "POST",
            "/jobs",
            json={"type": "emit", "payload": {"count": count, "rate_per_s": self.args.rate}},
        )
        return str(job["id"])

    def start_clients(self, job_id: str) -> list[Path]:
        outs = []
        for i in range(self.args.procs):
            sse = _share(self.args.sse, self.args.procs, i)
            ws = _share(self.args.ws, self.args.procs, i)
            out = self.tmp / f"client-{i}.json"
            argv = [
                sys.executable,
                SCRIPT,
                "--role=client",
                f"--url={self.url}",
                f"--job={job_id}",
                f"--sse={sse}",
                f"--ws={ws}",
                f"--timeout={self.args.timeout}",
                f"--out={out}",
                "--ws-deflate" if self.args.ws_deflate else "--no-ws-deflate",
                f"--read-tick-ms={self.args.read_tick_ms}",
            ]
            # The key goes by environment: command lines are visible to every user.
            self._spawn(argv, f"client-{i}.log", {**os.environ, CLIENT_KEY_ENV: self.key})
            outs.append(out)
        return outs

    def wait_files(self, paths: list[Path], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(p.exists() for p in paths):
            assert self.server is not None
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited:\n{self._log_tail('server.log')}")
            for i, proc in enumerate(self.procs[1:]):
                if proc.poll() is not None and not paths[i].exists():
                    raise RuntimeError(
                        f"client {i} exited ({proc.returncode}) before {what}:\n"
                        f"{self._log_tail(f'client-{i}.log')}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"clients not {what} after {timeout_s:.0f}s")
            time.sleep(0.05)

    def server_log(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")

    def stop_profiler(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.profiler.wait(30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
                self.profiler.wait()

    def all_events(self, job_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            after = events[-1]["seq"] if events else 0
            page = self.api("GET", f"/jobs/{job_id}/events", params={"after": after})
            events += page
            if len(page) < 1000:
                return events

    def start_profiler(self) -> None:
        if not self.args.profile:
            return
        assert self.server is not None
        argv = [find_py_spy(), "record", "--pid", str(self.server.pid), "--format", "raw"]
        argv += ["--threads", "--idle", "--rate", "100", "--nonblocking"]
        argv += ["--output", self.args.profile]
        with open(self.tmp / "py-spy.log", "wb") as log:
            # Not in self.procs: it is stopped with SIGINT, so that it writes its output.
            self.profiler = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )


def find_py_spy() -> str:
    """py-spy from PATH or next to this Python (it is not a project dependency)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit(
            "--profile needs py-spy: `pip install py-spy` somewhere on PATH "
            "(e.g. pip install --target /tmp/py-spy py-spy; PATH=/tmp/py-spy/bin:$PATH)"
        )
    return found


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def orchestrate(args: argparse.Namespace) -> int:
    if args.profile:
        find_py_spy()  # fail before starting anything
    fd_limit = raise_fd_limit()  # inherited by the server and the clients
    needed = args.sse + args.ws + 200
    if fd_limit < needed:
        print(f"warning: open-file limit {fd_limit} is below the ~{needed} sockets needed")
    bench = Bench(args)
    # SIGINT explicitly too: started in the background by a shell, it would be ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(bench, args)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        return 130
    finally:
        for sig in previous:  # a second Ctrl+C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        bench.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(bench: Bench, args: argparse.Namespace) -> int:
    run = _measure(bench, args)
    report = build_report(args, run, bench.all_events(run.job_id), bench.server_log())
    print_report(report)
    if args.profile:
        from _folded import summarize

        print(f"\nserver profile ({args.profile}):\n{summarize(args.profile)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["target_met"] else 1


def _measure(bench: Bench, args: argparse.Namespace) -> Run:
    bench.start_server()
    assert bench.server is not None
    pid = bench.server.pid
    rss_kb = {"idle": proc_status_kb(pid, "VmRSS")}
    job_id = bench.submit_paused_job()
    outs = bench.start_clients(job_id)
    started = time.monotonic()
    bench.wait_files([o.with_suffix(".ready") for o in outs], CONNECT_TIMEOUT_S, "connected")
    connect_s = time.monotonic() - started
    connected = sum(json.loads(o.with_suffix(".ready").read_text())["connected"] for o in outs)
    settle_s, idle_cpu = settle(pid)
    rss_kb["connected"] = proc_status_kb(pid, "VmRSS")
    print(
        f"{connected}/{args.sse + args.ws} subscribers connected in {connect_s:.1f} s; waited "
        f"{settle_s:.0f} s for the server to settle: {100 * idle_cpu:.0f}% of a core; go",
        flush=True,
    )

    sampler = Sampler(pid, bench.url)
    sampler.start()
    bench.start_profiler()
    cpu_before, wall_before = proc_cpu_s(pid), time.monotonic()
    busy_before, own_before = system_busy_s(), cpu_s()
    for out in outs:
        out.with_suffix(".go").touch()
    bench.api("POST", "/queues/default/resume")
    print(f"job running; clients wait up to {args.timeout:.0f} s for its end", flush=True)
    try:
        bench.wait_files(outs, args.timeout + 60, "finished")
    finally:
        server_cpu_s, wall_s = proc_cpu_s(pid) - cpu_before, time.monotonic() - wall_before
        busy_s, own_s = system_busy_s() - busy_before, cpu_s() - own_before
        sampler.stop()
        bench.stop_profiler()
    rss_kb["peak_sampled"] = sampler.peak_rss_kb
    rss_kb["peak_hwm"] = proc_status_kb(pid, "VmHWM")
    clients_cpu_s = sum(json.loads(o.read_text())["cpu_s"] for o in outs)
    return Run(
        job_id=job_id,
        outs=outs,
        connected=connected,
        connect_s=connect_s,
        idle_cpu=idle_cpu,
        rss_kb=rss_kb,
        server_cpu_s=server_cpu_s,
        wall_s=wall_s,
        # Whatever else ran on the machine meanwhile competed with the server for CPU.
        others_cpu_s=max(0.0, busy_s - server_cpu_s - clients_cpu_s - own_s),
        health_ms=sampler.health_ms,
        health_errors=sampler.health_errors,
    )


# -- entry point ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fan-out benchmark: one `stitchwork serve` process, one job emitting "
        "--rate events/s for --seconds, streamed to --sse SSE and --ws WebSocket subscribers "
        "held by --procs separate client processes. Reports delivery latency "
        "(receive time - created_at), gaps, duplicates, server RSS and CPU.",
    )
    parser.add_argument("--sse", type=int, default=500, help="SSE subscribers (default 500)")
    parser.add_argument("--ws", type=int, default=500, help="WebSocket subscribers (500)")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="emitting time (30)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (4)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("STITCHWORK_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
        help="Postgres server for --backend postgres; a fresh database is created and "
        "dropped (env STITCHWORK_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--ws-deflate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="offer permessage-deflate like browsers do (default on)",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds clients wait for the end (3 x --seconds + 60)"
    )
    parser.add_argument(
        "--read-tick-ms",
        type=float,
        default=5.0,
        help="clients look at their sockets once per tick, so that one wake-up reads many "
        "(over loopback the server pays for each wake-up; included in the latency; 0: at "
        "once; default 5)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--profile", metavar="PATH", help="record the server with py-spy (raw folded stacks)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--role", choices=("bench", "client"), default="bench", help=argparse.SUPPRESS
    )
    for internal in ("--url", "--job", "--out"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = 3 * args.seconds + 60
    if min(args.sse, args.ws) < 0 or args.sse + args.ws < 1 or args.procs < 1:
        parser.error("need at least one subscriber and one client process")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "client":
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_client(args))
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
