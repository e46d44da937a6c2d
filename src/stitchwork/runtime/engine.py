"""The composition root: builds every component of one process from ``Settings``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from stitchwork.bus.memory import InProcessBus
from stitchwork.bus.relay import EventRelay, RelayBus, create_relay
from stitchwork.clock import Clock, SystemClock
from stitchwork.config import Settings
from stitchwork.domain.guards import AGENT_JOB_TYPES
from stitchwork.queue.base import QueueBackend
from stitchwork.queue.sql import create_queue
from stitchwork.runner.agent_task import AgentTaskRunner
from stitchwork.runner.redaction import Redactor, url_secrets
from stitchwork.runner.sandbox import (
    INSTALL_HINT,
    JobConfinement,
    Sandbox,
    interpreter_paths,
)
from stitchwork.runtime.context import Handler
from stitchwork.runtime.handlers import builtin_handlers
from stitchwork.runtime.janitor import ProcessJanitor
from stitchwork.runtime.metrics import Metrics
from stitchwork.runtime.reconciler import Reconciler
from stitchwork.runtime.scheduler import Scheduler
from stitchwork.runtime.sweeper import LeaseSweeper
from stitchwork.runtime.worker import Worker, new_worker_id
from stitchwork.services.auth import AuthService
from stitchwork.services.executions import ExecutionService
from stitchwork.services.job_types import JobTypeCatalog
from stitchwork.services.jobs import JobService
from stitchwork.services.stitcher import Stitcher
from stitchwork.storage.auth import SqlAuthStore
from stitchwork.storage.db import Database
from stitchwork.storage.event_log import SqlEventLog
from stitchwork.storage.executions import SqlExecutionStore
from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.locks import SqlLockStore
from stitchwork.storage.migrate import upgrade
from stitchwork.storage.processes import SqlProcessStore, host_grace
from stitchwork.storage.rows import EventWriter
from stitchwork.storage.steps import SqlStepStore

log = structlog.get_logger(__name__)


@dataclass
class Engine:
    settings: Settings
    clock: Clock
    db: Database
    bus: InProcessBus
    relay: EventRelay  # how events reach other processes (bus_url)
    store: SqlJobStore
    steps: SqlStepStore
    queue: QueueBackend
    catalog: JobTypeCatalog
    jobs: JobService
    auth: AuthService
    executions: ExecutionService
    metrics: Metrics
    processes: SqlProcessStore
    confinement: JobConfinement

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        migrate: bool = True,
        search_path: str | None = None,
    ) -> Engine:
        """Connect, bring the schema up to date (unless ``migrate=False``) and start the queue."""
        clock = clock or SystemClock()
        db = Database(settings.database_url, search_path=search_path)
        bus = InProcessBus(default_buffer=settings.subscriber_buffer)
        writer = EventWriter(db, clock, bus)
        try:
            relay = create_relay(
                settings.bus_url,
                bus,
                SqlEventLog(db),
                tail_interval_s=settings.event_tail_interval.total_seconds(),
                search_path=search_path,
            )
            if relay.sends:  # committed events go to the local bus and the other processes
                writer.bus = RelayBus(bus, relay)
            if migrate:
                await upgrade(db)
            queue = create_queue(settings, writer)
            await queue.start()
            await relay.start()  # sends in the background: never waits for the remote
        except BaseException:
            await db.dispose()
            raise
        store = SqlJobStore(writer)
        steps = SqlStepStore(writer)
        catalog = JobTypeCatalog()
        confinement = job_confinement(settings)
        jobs = JobService(store, steps, queue, catalog, settings, confinement=confinement)
        execution_store = SqlExecutionStore(db)
        processes = SqlProcessStore(db)
        stitcher = Stitcher(
            writer,
            execution_store,
            SqlLockStore(db),
            store,
            jobs,
            clock,
            starvation=settings.starvation_after,
            pull_lease=settings.pull_lease,
            processes=processes,
            host_grace=host_grace(settings.lease),
        )
        stitcher.on_cancelled = queue.cancelled_in
        return cls(
            settings=settings,
            clock=clock,
            db=db,
            bus=bus,
            relay=relay,
            store=store,
            steps=steps,
            queue=queue,
            catalog=catalog,
            jobs=jobs,
            auth=AuthService(SqlAuthStore(db, clock)),
            executions=ExecutionService(writer, execution_store, store, jobs, stitcher, clock),
            metrics=Metrics(),
            processes=processes,
            confinement=confinement,
        )

    async def close(self) -> None:
        await self.relay.close()  # sends what is pending first, briefly
        await self.queue.close()
        await self.db.dispose()

    def worker(
        self,
        *,
        concurrency: int | None = None,
        handlers: Mapping[str, Handler] | None = None,
        worker_id: str | None = None,
        queues: list[str] | None = None,
    ) -> Worker:
        return Worker(
            store=self.store,
            steps=self.steps,
            queue=self.queue,
            handlers=handlers if handlers is not None else self.handlers(),
            settings=self.settings,
            concurrency=concurrency,
            worker_id=worker_id,
            queues=queues,
            metrics=self.metrics,
            processes=self.processes,
            redact=redactor(self.settings),
        )

    def handlers(self) -> dict[str, Handler]:
        """The built-in job types' handlers, the agent runner's included."""
        settings = self.settings
        runner = AgentTaskRunner(
            settings.agent_work_dir,
            settings.agent_work_dir / "locks",
            grace_s=settings.cancel_grace.total_seconds(),
            confinement=self.confinement,
        )
        return {**builtin_handlers(self.confinement), **dict.fromkeys(AGENT_JOB_TYPES, runner)}

    def scheduler(self, actor: str | None = None) -> Scheduler:
        return Scheduler(
            self.executions.stitcher,
            self.executions.store,
            self.bus,
            interval_s=self.settings.scheduler_interval.total_seconds(),
            actor=actor or f"scheduler:{new_worker_id()}",
        )

    def reconciler(self) -> Reconciler:
        return Reconciler(self.queue, interval_s=self.settings.reconcile_interval.total_seconds())

    def sweeper(self, actor: str | None = None) -> LeaseSweeper:
        return LeaseSweeper(
            self.store,
            interval_s=self.settings.sweep_interval.total_seconds(),
            actor=actor or f"sweeper:{new_worker_id()}",
            janitor=self.janitor(),
            host_grace=host_grace(self.settings.lease),
        )

    def janitor(self) -> ProcessJanitor:
        return ProcessJanitor(
            self.processes,
            self.clock,
            host_refresh_s=self.settings.lease.total_seconds() / 3,
            grace_s=self.settings.cancel_grace.total_seconds(),
        )

    async def prepare_host(self) -> None:
        """Before this process's worker takes a job: say how jobs are confined here, and kill
        what an earlier, dead process of this host left running (its agents, gates and
        commands), so no job's process ever runs next to the job's next attempt."""
        sandbox = self.confinement.sandbox
        if not sandbox.enabled:
            log.warning(
                "sandbox_off",
                detail="STITCHWORK_SANDBOX=off: every job's commands run unconfined, with "
                "this server's access to files, processes and the network",
            )
        elif (problem := sandbox.problem()) is not None:
            log.error("sandbox_unavailable", problem=problem, detail=INSTALL_HINT)
        reaped = await self.janitor().sweep_once()
        if reaped.killed:
            log.warning("orphans_reaped", count=len(reaped.killed))


def job_confinement(settings: Settings) -> JobConfinement:
    """The sandbox, environment and repository roots of every command jobs start: hidden from
    them are the data dir, the work dir, the repository roots and the server's home (but for
    stitchwork's own Python, which stays readable)."""
    hidden = [settings.data_dir, settings.agent_work_dir, *settings.repo_roots, Path.home()]
    return JobConfinement(
        Sandbox(settings.sandbox, hidden=hidden),
        pass_env=tuple(settings.pass_env),
        repo_roots=tuple(settings.repo_roots),
        readable=interpreter_paths(),
    )


def redactor(settings: Settings) -> Redactor:
    """Redacts the server's secrets (and any API key) from what job commands print."""
    secrets = [
        settings.api_key,
        settings.slack_signing_secret,
        settings.mattermost_token,
        settings.discord_token,
        settings.slack_webhook_url,
    ]
    for url in (settings.database_url, settings.queue_url, settings.bus_url):
        secrets += url_secrets(url)
    return Redactor(secrets)


@asynccontextmanager
async def open_engine(settings: Settings, **kwargs: object) -> AsyncIterator[Engine]:
    engine = await Engine.open(settings, **kwargs)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        await engine.close()


async def run_worker_until_signalled(engine: Engine, worker: Worker) -> None:
    """Run a worker and a sweeper until SIGTERM/SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    await engine.prepare_host()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, worker.stop)
    loops = [
        asyncio.create_task(engine.sweeper(actor=worker.worker_id).run(), name="sweeper"),
        asyncio.create_task(engine.reconciler().run(), name="reconciler"),
    ]
    try:
        await worker.run()
    finally:
        for loop_task in loops:
            loop_task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
