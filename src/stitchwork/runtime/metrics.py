"""Metrics: what this process observes (job and step durations, heartbeats, live streams) and
what the database says (jobs by status, queue depth, executions, lock contention).

Observations go into a per-engine prometheus-client registry (no global state). Database
figures are read when someone asks (``snapshot``) and exported as gauges at scrape time.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select

from stitchwork.storage.db import Database
from stitchwork.storage.locks import lock_key
from stitchwork.storage.tables import execution_nodes, executions, resource_locks, runner_jobs

DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The process's own observations, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.job_duration = Histogram(
            "stitchwork_job_duration_seconds",
            "Run time of job attempts that ended in this process, by type and outcome.",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "stitchwork_step_duration_seconds",
            "Run time of job steps that ended in this process, by step type and status.",
            ["type", "status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.heartbeats = Counter(
            "stitchwork_worker_heartbeats",
            "Lease renewals sent by this process's workers.",
            registry=self.registry,
        )
        self.last_heartbeat = Gauge(
            "stitchwork_worker_last_heartbeat_timestamp_seconds",
            "Unix time of this process's last worker heartbeat.",
            registry=self.registry,
        )
        self.streams = Gauge(
            "stitchwork_stream_subscribers",
            "Live event stream subscribers of this process, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self._snapshot: dict[str, Any] | None = None
        self.registry.register(_SnapshotCollector(self))

    def heartbeat(self) -> None:
        self.heartbeats.inc()
        self.last_heartbeat.set(time.time())

    def exposition(self, snapshot: dict[str, Any]) -> bytes:
        """Prometheus text format of this process's metrics and the database ``snapshot``."""
        self._snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._snapshot = None


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics._snapshot
        if snap is None:
            return
        jobs = GaugeMetricFamily(
            "stitchwork_jobs", "Jobs in the database by status.", labels=["status"]
        )
        for status, count in sorted(snap["jobs_by_status"].items()):
            jobs.add_metric([status], count)
        yield jobs
        depth = GaugeMetricFamily(
            "stitchwork_queue_depth", "Queued jobs by queue.", labels=["queue"]
        )
        for queue, count in sorted(snap["queue_depth"].items()):
            depth.add_metric([queue], count)
        yield depth
        ex = GaugeMetricFamily("stitchwork_executions", "Executions by status.", labels=["status"])
        for status, count in sorted(snap["executions_by_status"].items()):
            ex.add_metric([status], count)
        yield ex
        yield GaugeMetricFamily(
            "stitchwork_lock_contentions",
            "Times nodes found their claims locked (all executions).",
            value=snap["locks"]["contentions"],
        )
        yield GaugeMetricFamily(
            "stitchwork_lock_wait_seconds",
            "Total time nodes waited for locks (all executions).",
            value=snap["locks"]["wait_s"],
        )
        yield GaugeMetricFamily(
            "stitchwork_locks_held", "Claims held right now.", value=snap["locks"]["held"]
        )


async def snapshot(db: Database, workspace_id: UUID | None = None) -> dict[str, Any]:
    """Jobs by status, queue depth, executions and locks: database-wide, or of one workspace
    (whose locks held are its executions' locks, on shared checkouts too, and its holds on
    the repositories it names)."""
    jobs_q = select(runner_jobs.c.status, func.count()).group_by(runner_jobs.c.status)
    queued_q = (
        select(runner_jobs.c.queue_name, func.count())
        .where(runner_jobs.c.status == "queued")
        .group_by(runner_jobs.c.queue_name)
    )
    execs_q = select(executions.c.status, func.count()).group_by(executions.c.status)
    contention_q = select(
        func.coalesce(func.sum(execution_nodes.c.contentions), 0),
        func.coalesce(func.sum(execution_nodes.c.lock_wait_s), 0.0),
    )
    held_q = select(func.count()).select_from(resource_locks)
    if workspace_id is not None:
        own = select(executions.c.id).where(executions.c.workspace_id == workspace_id)
        named = lock_key(workspace_id, "")  # the prefix of every name of this workspace
        jobs_q = jobs_q.where(runner_jobs.c.workspace_id == workspace_id)
        queued_q = queued_q.where(runner_jobs.c.workspace_id == workspace_id)
        execs_q = execs_q.where(executions.c.workspace_id == workspace_id)
        contention_q = contention_q.where(execution_nodes.c.execution_id.in_(own))
        held_q = held_q.where(
            or_(
                resource_locks.c.execution_id.in_(own),
                resource_locks.c.repo.startswith(named, autoescape=True),
            )
        )
    async with db.read() as conn:
        jobs = await conn.execute(jobs_q)
        queued = await conn.execute(queued_q)
        execs = await conn.execute(execs_q)
        contention = (await conn.execute(contention_q)).one()
        held = (await conn.execute(held_q)).scalar_one()
        return {
            "jobs_by_status": {str(s): int(c) for s, c in jobs},
            "queue_depth": {str(q): int(c) for q, c in queued},
            "executions_by_status": {str(s): int(c) for s, c in execs},
            "locks": {
                "held": int(held),
                "contentions": int(contention[0]),
                "wait_s": round(float(contention[1]), 6),
            },
        }


def process_figures() -> dict[str, Any]:
    """Memory and limits of this process (Linux /proc and cgroup when present)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft_fds, hard_fds = resource.getrlimit(resource.RLIMIT_NOFILE)
    figures: dict[str, Any] = {
        "pid": os.getpid(),
        "rss_bytes": _rss_bytes(),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "open_fds": _count(Path("/proc/self/fd")),
        "fd_limit": soft_fds if soft_fds != resource.RLIM_INFINITY else hard_fds,
        "memory_limit_bytes": _cgroup_memory_limit(),
        "cpus": os.cpu_count(),
    }
    return figures


def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _count(path: Path) -> int | None:
    try:
        return sum(1 for _ in path.iterdir())
    except OSError:
        return None


def _cgroup_memory_limit() -> int | None:
    for path in (
        Path("/sys/fs/cgroup/memory.max"),
        Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    ):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
        return None
    return None
