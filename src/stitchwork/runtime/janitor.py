"""No job's process outlives its worker: process groups are recorded, and orphans are killed.

``JobGroups`` records, for one job attempt, every process group its handler starts (the worker
sets it as ``runner.process.group_recorder`` while the handler runs). ``ProcessJanitor`` runs
in every ``serve`` and ``worker`` process, once before the worker takes its first job and then
with every lease sweep: it keeps its host's row fresh and, among the groups recorded on its
host that are still open, closes those that are gone (or belong to an earlier boot) and kills
those whose worker process is dead. A live worker stops its own jobs' groups itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from uuid import UUID

import structlog

from stitchwork.clock import Clock
from stitchwork.runner.process import (
    KILL_GRACE_S,
    ProcessGroup,
    boot_id,
    kill_process_group,
    process_group_alive,
    process_start_ticks,
)
from stitchwork.storage.processes import ProcessRecord, SqlProcessStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ThisProcess:
    """Where and who this process is, as recorded with each process group it starts."""

    host: str
    boot_id: str
    pid: int
    start: int | None

    @classmethod
    def current(cls) -> ThisProcess:
        pid = os.getpid()
        return cls(socket.gethostname(), boot_id(), pid, process_start_ticks(pid))


def process_alive(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (clock ticks) still runs."""
    if start is not None:
        return process_start_ticks(pid) == start
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # running, as another user
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int, leader_start: int | None) -> bool:
    """Whether the recorded group still has a live process.

    A pid is never handed out while a group of that id has members, so a leader pid that now
    belongs to a process of another start time means the recorded group emptied first.
    """
    current = process_start_ticks(pgid)
    if current is not None and leader_start is not None and current != leader_start:
        return False
    return process_group_alive(pgid)


class JobGroups:
    """The ``GroupRecorder`` of one job attempt: rows in ``job_processes``."""

    def __init__(
        self,
        store: SqlProcessStore,
        me: ThisProcess,
        clock: Clock,
        *,
        job_id: UUID,
        attempt: int,
        worker_id: str,
    ) -> None:
        self.store = store
        self.me = me
        self.clock = clock
        self.job_id = job_id
        self.attempt = attempt
        self.worker_id = worker_id

    async def started(self, group: ProcessGroup) -> object:
        return await self.store.record_started(
            job_id=self.job_id,
            attempt=self.attempt,
            worker_id=self.worker_id,
            host=self.me.host,
            boot_id=self.me.boot_id,
            pgid=group.pgid,
            leader_start=group.leader_start,
            owner_pid=self.me.pid,
            owner_start=self.me.start,
            now=self.clock.now(),
        )

    async def ended(self, token: object) -> None:
        assert isinstance(token, UUID)
        try:
            await self.store.record_ended([token], self.clock.now())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the janitor closes the row once it finds the group gone
            log.warning("process_end_not_recorded", job_id=str(self.job_id), error=str(exc))


@dataclass(frozen=True, slots=True)
class JanitorPass:
    killed: list[ProcessRecord]
    closed: list[ProcessRecord]


class ProcessJanitor:
    """Kills the recorded process groups of this host that belong to no live worker.

    Args:
        store: the recorded groups and hosts.
        clock: for timestamps.
        host_refresh_s: how often this host's row is refreshed (at most).
        grace_s: between SIGTERM and SIGKILL of an orphaned group.
    """

    def __init__(
        self,
        store: SqlProcessStore,
        clock: Clock,
        *,
        host_refresh_s: float,
        grace_s: float = KILL_GRACE_S,
        me: ThisProcess | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.host_refresh_s = host_refresh_s
        self.grace_s = grace_s
        self.me = me or ThisProcess.current()
        self._refreshed = float("-inf")

    async def sweep_once(self) -> JanitorPass:
        """Refresh this host's row when due, then deal with its open groups."""
        if time.monotonic() - self._refreshed >= self.host_refresh_s:
            await self.store.seen(self.me.host, self.me.boot_id, self.clock.now())
            self._refreshed = time.monotonic()
        killed: list[ProcessRecord] = []
        closed: list[ProcessRecord] = []
        for record in await self.store.open_on_host(self.me.host):
            if record.boot_id != self.me.boot_id:
                closed.append(record)  # the machine rebooted since: the group died with it
            elif not group_alive(record.pgid, record.leader_start):
                closed.append(record)
            elif process_alive(record.owner_pid, record.owner_start):
                continue  # its worker is alive and stops its own groups
            elif await kill_process_group(record.pgid, self.grace_s):
                killed.append(record)
                closed.append(record)
        for record in killed:
            log.warning(
                "orphaned_process_group_killed",
                job_id=str(record.job_id),
                attempt=record.attempt,
                pgid=record.pgid,
                worker_id=record.worker_id,
            )
        await self.store.record_ended([r.id for r in closed], self.clock.now())
        return JanitorPass(killed, closed)
