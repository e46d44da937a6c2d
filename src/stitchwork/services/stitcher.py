"""The stitcher: moves executions forward, one transaction per decision.

A round locks the execution's row, reads what its running nodes' jobs did, completes, fails,
skips or cancels nodes, readies dependents, starts ready nodes whose claims lock (jobs
dispatch) or hands one out under a lease (pull dispatch), detects deadlocks, decides the
outcome, and writes every change with its ``execution.*``/``task.*``/``lock.*`` events. The
pure decisions come from ``domain.dag`` and ``domain.executions``.

The execution and the repository lock table are cached in memory between rounds and reused
while their row versions are unchanged, so a round costs what changed, not the plan's size; a
round that fails drops the caches.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from stitchwork.clock import Clock
from stitchwork.domain.dag import (
    NodeStatus,
    check_node_transition,
)
from stitchwork.domain.events import EventType
from stitchwork.domain.executions import (
    TERMINAL_EXECUTION_STATUSES,
    Dispatch,
    Execution,
    ExecutionStatus,
    check_execution_transition,
    choose_starts,
    claims_of,
    find_deadlock,
)
from stitchwork.domain.guards import AGENT_JOB_TYPES
from stitchwork.domain.jobs import MAX_PRIORITY, MIN_PRIORITY, JobStatus, NewJob
from stitchwork.domain.plans import PlanNode
from stitchwork.errors import Conflict, InvalidRequest, InvalidTransition, NotFound
from stitchwork.services.jobs import JobService
from stitchwork.services.repo_locks import HOLD_PREFIX, RepoLocks
from stitchwork.services.rounds import FINAL_EVENTS, Round, RunState
from stitchwork.storage.executions import ExecutionRow, NodeRow, SqlExecutionStore
from stitchwork.storage.jobs import SqlJobStore
from stitchwork.storage.locks import SqlLockStore, lock_key
from stitchwork.storage.processes import SqlProcessStore
from stitchwork.storage.rows import EventWriter, Tx, transition_jobs
from stitchwork.storage.tables import runner_jobs


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """What a pull-mode orchestrator reports for one node it was handed."""

    node_id: str
    ok: bool
    result: Any = None
    error: str | None = None


@dataclass(slots=True)
class Grant:
    """A node handed to a pull-mode orchestrator: run it, then complete or fail it."""

    execution_id: UUID
    node_id: str
    title: str
    job_type: str
    payload: dict[str, Any]
    claims: list[str]
    mode: str
    lease_owner: str
    lease_expires_at: datetime


class Stitcher:
    def __init__(
        self,
        writer: EventWriter,
        store: SqlExecutionStore,
        lock_store: SqlLockStore,
        job_store: SqlJobStore,
        jobs: JobService,
        clock: Clock,
        *,
        starvation: timedelta = timedelta(seconds=30),
        pull_lease: timedelta = timedelta(minutes=10),
        processes: SqlProcessStore | None = None,
        host_grace: timedelta = timedelta(seconds=12),
    ) -> None:
        self.writer = writer
        self.store = store
        self.job_store = job_store
        self.jobs = jobs
        self.clock = clock
        self.starvation = starvation
        self.pull_lease = pull_lease
        self.processes = processes
        self.host_grace = host_grace
        self._runs: dict[UUID, RunState] = {}
        self.locks = RepoLocks(writer, lock_store)
        # Wired to the queue: tells workers to stop jobs cancelled in a transaction.
        self.on_cancelled: Callable[[Tx, list[UUID]], Awaitable[None]] | None = None

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _guard(self, execution_id: UUID) -> Iterator[None]:
        """A round that fails drops what it may have changed in the caches."""
        try:
            yield
        except BaseException:
            run = self._runs.pop(execution_id, None)
            self.locks.forget(
                lock_key(run.ex.workspace_id, run.ex.repo) if run is not None else None
            )
            raise

    async def _open(self, tx: Tx, execution_id: UUID, workspace_id: UUID | None) -> RunState:
        row = await self.store.lock(tx, execution_id, workspace_id=workspace_id)
        cached = self._runs.get(execution_id)
        if cached is not None and cached.ex.version == row["version"]:
            return cached
        if cached is not None:
            plan = cached.ex.plan
        else:
            plan = await self.store.load_plan(tx.conn, execution_id)
        ex = self.store.execution_from_row(row, plan)
        run = RunState.build(ex, await self.store.load_nodes(tx.conn, execution_id))
        self._runs[execution_id] = run
        return run

    def adopt(self, tx: Tx, ex: ExecutionRow, nodes: list[NodeRow]) -> None:
        """Cache the state of an execution created in ``tx`` once it commits, so its first
        round does not read back the nodes just written."""
        tx.after_commit.append(lambda: self._runs.__setitem__(ex.id, RunState.build(ex, nodes)))

    async def _keep_draining(self, tx: Tx, rnd: Round) -> None:
        """Owners released this round whose job still has a live process group keep their
        locks (a cancelled job's agent may still be writing): ``release_drained`` lets them go
        once the groups are gone."""
        pending = rnd.release - rnd.checked
        if self.processes is None or not pending:
            return
        rnd.checked |= pending
        by_job: dict[UUID, str] = {}
        for owner in pending:
            node = rnd.run.nodes.get(owner.partition("/")[2])
            if node is not None and node.job_id is not None:
                by_job[node.job_id] = owner
        live = await self.processes.with_live_groups(
            tx.conn, list(by_job), seen_after=rnd.now - self.host_grace
        )
        for job_id in live:
            rnd.release.discard(by_job[job_id])
            rnd.draining.add(by_job[job_id])

    async def release_drained(self, *, actor: str = "scheduler") -> int:
        """Release the locks of ended nodes whose jobs no longer have a live process group;
        returns how many owners were released."""
        if self.processes is None:
            return 0
        async with self.writer.write() as tx:
            rows = await self.processes.locks_of_ended_nodes(tx.conn)
            if not rows:
                return 0
            jobs = [job_id for _, _, job_id in rows if job_id is not None]
            live = await self.processes.with_live_groups(
                tx.conn, jobs, seen_after=self.clock.now() - self.host_grace
            )
            by_repo: dict[str, set[str]] = {}
            for repo, owner, job_id in rows:
                if job_id not in live:
                    by_repo.setdefault(repo, set()).add(owner)
            for repo, owners in sorted(by_repo.items()):
                await self.locks.write(
                    tx, repo, release=sorted(owners), acquire=[], now=self.clock.now()
                )
        return sum(len(owners) for owners in by_repo.values())

    async def _close(self, tx: Tx, rnd: Round) -> None:
        """Release and acquire locks, write events, nodes and the execution row."""
        run = rnd.run
        await self._keep_draining(tx, rnd)
        if rnd.release or rnd.acquire:
            await self.locks.write(
                tx,
                lock_key(run.ex.workspace_id, run.ex.repo),
                release=rnd.release,
                acquire=rnd.acquire,
                now=rnd.now,
            )
        if rnd.cancel_jobs:
            await transition_jobs(
                tx,
                # A job that began landing ends by itself, as its target branch says.
                where=[runner_jobs.c.id.in_(rnd.cancel_jobs), runner_jobs.c.landing_at.is_(None)],
                expected={JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING},
                to=JobStatus.CANCELLED,
                now=rnd.now,
                actor=rnd.actor,
                event_type=EventType.JOB_CANCELLED,
                close_steps="execution node cancelled",
                event_payload={"reason": "execution node cancelled"},
                values={"lease_owner": None, "lease_expires_at": None, "completed_at": rnd.now},
            )
            if self.on_cancelled is not None:
                await self.on_cancelled(tx, rnd.cancel_jobs)
        if rnd.events:
            await self.store.write_events(tx, run.ex, rnd.events, actor=rnd.actor, now=rnd.now)
        if rnd.events or rnd.dirty:
            run.ex.updated_at = rnd.now
            await self.store.save(tx, run.ex, list(rnd.dirty.values()))

    # -- rounds ----------------------------------------------------------------------------

    async def _sync(self, tx: Tx, rnd: Round) -> None:
        """Take in what happened to running nodes: ended jobs, expired pull leases."""
        run = rnd.run
        if not run.running:
            return
        if run.ex.dispatch is Dispatch.PULL:
            for node_id in sorted(run.running):
                node = run.nodes[node_id]
                if node.lease_expires_at is not None and node.lease_expires_at <= rnd.now:
                    rnd.fail(node, "lease expired before the node was completed")
            return
        by_job: dict[UUID, str] = {}
        for node_id in run.running:
            job_id = run.nodes[node_id].job_id
            if job_id is not None:
                by_job[job_id] = node_id
        ended = await self.store.ended_jobs(tx, by_job)
        for job_id in sorted(ended, key=lambda j: run.ex.plan.position(by_job[j])):
            node = run.nodes[by_job[job_id]]
            if node.status is not NodeStatus.RUNNING:
                continue  # cancelled by an earlier failure in this round
            job = ended[job_id]
            if job["status"] == JobStatus.COMPLETED.value:
                node.result = job["result"]
                rnd.move(node, NodeStatus.COMPLETED, job_id=str(job_id))
            else:
                error = job["error"] or f"job {job['status']}"
                rnd.fail(node, error, job_id=str(job_id))

    async def _start(self, tx: Tx, rnd: Round, *, want: int, lease_owner: str | None) -> list[str]:
        """Start up to ``want`` ready nodes whose claims lock; returns their ids."""
        run = rnd.run
        ex = run.ex
        free = min(want, ex.concurrency - len(run.running))
        if free <= 0 or not run.ready:
            return []
        starved_since = rnd.now - self.starvation
        boosted = sorted(
            (n for n in run.blocked_by if run.nodes[n].blocked_since <= starved_since),  # type: ignore[operator]
            key=lambda n: run.nodes[n].blocked_since,  # type: ignore[arg-type, return-value]
        )
        await self._keep_draining(tx, rnd)
        # Locks by the repository's key; the job gets the repository as the plan gave it.
        key = lock_key(ex.workspace_id, ex.repo)
        table = await self.locks.table(tx, key)
        for owner in rnd.release:  # released earlier in this round
            table.release(owner)
        holders = table.holders()
        first = set(boosted)
        # Boosted nodes first, then start order; a node blocked by a holder that still holds
        # locks is still blocked, and is skipped without a lock check.
        ordered = itertools.chain(
            boosted,
            (n for _, _, n in run.order if n not in first and run.blocked_by.get(n) not in holders),
        )
        reserved = await self.locks.reservations(
            tx, key, blocked_before=starved_since, exclude=ex.id
        )
        decided = choose_starts(
            ex.plan, ordered, free, table, run.owner, boosted=first, reserved=reserved
        )
        for node_id, conflicts in decided.blocked.items():
            run.blocked_by[node_id] = conflicts[0].holder
            node = run.nodes[node_id]
            if node.blocked_since is None:
                node.blocked_since = rnd.now
                node.contentions += 1
                rnd.dirty[node_id] = node
                # The decision stopped at the first conflict; the event names them all.
                conflicts = (
                    table.conflicts(run.owner(node_id), claims_of(run.ex.plan, node_id))
                    or conflicts
                )
                rnd.events.append(
                    (
                        EventType.LOCK_CONTENDED,
                        {
                            "node": node_id,
                            "holders": sorted({c.holder for c in conflicts}),
                            "conflicts": [
                                {
                                    "claim": c.claim,
                                    "mode": c.mode.value,
                                    "held_claim": c.held_claim,
                                    "held_mode": c.held_mode.value,
                                    "holder": c.holder,
                                }
                                for c in conflicts
                            ],
                        },
                    )
                )
        specs = []
        for node_id in decided.starts:
            plan_node = ex.plan.node(node_id)
            owner = run.owner(node_id)
            rnd.acquire += [(h, ex.id, node_id) for h in table.held(owner)]
            node = run.nodes[node_id]
            if ex.dispatch is Dispatch.PULL:
                node.lease_owner = lease_owner
                node.lease_expires_at = rnd.now + self.pull_lease
                rnd.move(node, NodeStatus.RUNNING, lease_owner=lease_owner)
                continue
            spec = self.jobs.spec(node_job(plan_node, ex.repo))
            specs.append(replace(spec, execution_id=ex.id, node_id=node_id))
        if specs:
            created = await self.job_store.create_jobs_in(
                tx, ex.workspace_id, specs, actor=rnd.actor
            )
            for made in created:
                node = run.nodes[made.job.node_id or ""]
                node.job_id = made.job.id
                rnd.move(node, NodeStatus.RUNNING, job_id=str(made.job.id))
        return decided.starts

    async def _finish_round(self, tx: Tx, rnd: Round, blocked_all: bool) -> None:
        run = rnd.run
        ex = run.ex
        if ex.status is ExecutionStatus.RUNNING and run.open == 0:
            outcome = ExecutionStatus.COMPLETED if run.unfinished == 0 else ExecutionStatus.FAILED
            counts = {k: v for k, v in run.counts.items() if v}
            rnd.set_status(outcome, FINAL_EVENTS[outcome], nodes=counts)
        elif ex.status is ExecutionStatus.RUNNING and blocked_all:
            await self._check_deadlock(tx, rnd)
        await self._close(tx, rnd)
        if ex.status in TERMINAL_EXECUTION_STATUSES:
            # Ended for good: nothing will read this cache again (a committed round's cache
            # entry is rebuilt from the database if anyone asks).
            tx.after_commit.append(lambda: self._forget(ex.id))

    async def _check_deadlock(self, tx: Tx, rnd: Round) -> None:
        run = rnd.run
        if run.running or not run.ready:
            return
        table = await self.locks.table(tx, lock_key(run.ex.workspace_id, run.ex.repo))
        blocked = {
            n: table.conflicts(run.owner(n), claims_of(run.ex.plan, n)) for n in sorted(run.ready)
        }
        blocked = {n: c for n, c in blocked.items() if c}
        holders = {c.holder for conflicts in blocked.values() for c in conflicts}
        live = await self.locks.live_owners(tx, holders, known_running=self._running_owners())
        # A node's locks are always released: when its job ends and its processes are gone.
        live |= {h for h in holders if not h.startswith(HOLD_PREFIX)}
        waits = {str(run.ex.id): {h.split("/", 1)[0] for h in holders}}
        deadlock = find_deadlock(
            running=len(run.running),
            ready=run.ready,
            blocked=blocked,
            live_holders=live,
            waits_for=waits,
            start=str(run.ex.id),
        )
        if deadlock is None:
            return
        rnd.set_status(ExecutionStatus.PAUSED, EventType.EXECUTION_DEADLOCK, **deadlock.payload())
        rnd.events.append((EventType.EXECUTION_PAUSED, {"status": "paused", "reason": "deadlock"}))

    def _forget(self, execution_id: UUID) -> None:
        self._runs.pop(execution_id, None)

    def _running_owners(self) -> set[str]:
        return {run.owner(n) for run in self._runs.values() for n in run.running}

    # -- operations ------------------------------------------------------------------------

    async def advance(self, execution_id: UUID, *, actor: str = "scheduler") -> Execution | None:
        """One scheduling round for a running (or paused) execution; None if it is neither."""
        async with self.writer.write() as tx:
            with self._guard(execution_id):
                run = await self._open(tx, execution_id, None)
                if run.ex.status not in (ExecutionStatus.RUNNING, ExecutionStatus.PAUSED):
                    return None
                rnd = Round(run, self.clock.now(), actor)
                await self._sync(tx, rnd)
                blocked_all = False
                if run.ex.status is ExecutionStatus.RUNNING and run.ex.dispatch is Dispatch.JOBS:
                    started = await self._start(tx, rnd, want=run.ex.concurrency, lease_owner=None)
                    blocked_all = not started
                elif run.ex.status is ExecutionStatus.RUNNING:
                    blocked_all = await self._pull_blocked(tx, rnd)
                await self._finish_round(tx, rnd, blocked_all)
                return run.ex.snapshot(counts=run.counts)

    async def _pull_blocked(self, tx: Tx, rnd: Round) -> bool:
        """Pull mode: whether every ready node is blocked by locks (for deadlock detection)."""
        run = rnd.run
        if run.running or not run.ready:
            return False
        table = await self.locks.table(tx, lock_key(run.ex.workspace_id, run.ex.repo))
        return all(table.conflicts(run.owner(n), claims_of(run.ex.plan, n)) for n in run.ready)

    async def change(
        self,
        execution_id: UUID,
        workspace_id: UUID | None,
        to: ExecutionStatus,
        *,
        actor: str,
        expect: ExecutionStatus | None = None,
    ) -> Execution:
        """start (planned -> running), pause, resume (paused -> running) or abort; with
        ``expect``, only from that status."""
        async with self.writer.write() as tx:
            with self._guard(execution_id):
                run = await self._open(tx, execution_id, workspace_id)
                ex = run.ex
                if expect is not None and ex.status is not expect:
                    # start is for planned executions, resume for paused ones: say which.
                    check_execution_transition(ex.id, ex.status, to)
                    verb = "resume" if ex.status is ExecutionStatus.PAUSED else "start"
                    raise InvalidTransition(
                        ex.id,
                        ex.status.value,
                        to.value,
                        reason=f"the execution is {ex.status.value}; use {verb}",
                    )
                rnd = Round(run, self.clock.now(), actor)
                if to is ExecutionStatus.ABORTED:
                    rnd.set_status(to, EventType.EXECUTION_ABORTED)
                    rnd.cancel_all("execution aborted")
                elif to is ExecutionStatus.PAUSED:
                    rnd.set_status(to, EventType.EXECUTION_PAUSED, reason="requested")
                elif to is ExecutionStatus.RUNNING:
                    event = (
                        EventType.EXECUTION_STARTED
                        if ex.status is ExecutionStatus.PLANNED
                        else EventType.EXECUTION_RESUMED
                    )
                    rnd.set_status(to, event)
                    for node_id, missing in list(run.waiting.items()):
                        if missing == 0:
                            rnd.move(run.nodes[node_id], NodeStatus.READY)
                    await self._sync(tx, rnd)
                    if ex.dispatch is Dispatch.JOBS:
                        await self._start(tx, rnd, want=ex.concurrency, lease_owner=None)
                else:
                    raise InvalidRequest(
                        f"cannot change an execution to {to.value}", field="action"
                    )
                await self._finish_round(tx, rnd, blocked_all=False)
                return ex.snapshot(run.nodes.values())

    async def next_nodes(
        self,
        execution_id: UUID,
        workspace_id: UUID | None,
        *,
        lease_owner: str,
        actor: str,
        limit: int = 1,
    ) -> list[Grant]:
        """Pull mode: hand out up to ``limit`` nodes that may start now (claims locked,
        within the concurrency limit), each under a lease; ``[]`` when none may."""
        async with self.writer.write() as tx:
            with self._guard(execution_id):
                run = await self._open(tx, execution_id, workspace_id)
                ex = run.ex
                if ex.dispatch is not Dispatch.PULL:
                    raise Conflict(
                        f"execution {ex.id} runs its nodes as jobs; only pull-mode executions "
                        "hand out nodes",
                        field="dispatch",
                    )
                if ex.status is not ExecutionStatus.RUNNING:
                    return []
                rnd = Round(run, self.clock.now(), actor)
                await self._sync(tx, rnd)
                started = await self._start(tx, rnd, want=limit, lease_owner=lease_owner)
                await self._finish_round(tx, rnd, blocked_all=False)
                return [self._grant(run, node_id, lease_owner) for node_id in started]

    @staticmethod
    def _grant(run: RunState, node_id: str, lease_owner: str) -> Grant:
        node = run.ex.plan.node(node_id)
        expires = run.nodes[node_id].lease_expires_at
        assert expires is not None
        return Grant(
            execution_id=run.ex.id,
            node_id=node.id,
            title=node.title,
            job_type=node.job_type,
            payload=dict(node.payload),
            claims=list(node.claims),
            mode=node.mode.value,
            lease_owner=lease_owner,
            lease_expires_at=expires,
        )

    async def finish_nodes(
        self,
        execution_id: UUID,
        workspace_id: UUID | None,
        outcomes: Sequence[NodeOutcome],
        *,
        actor: str,
        lease_owner: str | None = None,
    ) -> Execution:
        """Pull mode: record that handed-out nodes completed or failed, all in one round (all
        or nothing: an outcome that is not allowed refuses the whole batch). Returns the
        execution with node counts but without its nodes (the hot path of a pull loop;
        ``get`` has them)."""
        async with self.writer.write() as tx:
            with self._guard(execution_id):
                run = await self._open(tx, execution_id, workspace_id)
                if run.ex.dispatch is not Dispatch.PULL:
                    raise Conflict(
                        f"execution {run.ex.id} runs its nodes as jobs; their jobs report "
                        "their outcome",
                        field="dispatch",
                    )
                rnd = Round(run, self.clock.now(), actor)
                for outcome in outcomes:
                    node = run.nodes.get(outcome.node_id)
                    if node is None:
                        raise NotFound(
                            f"execution {execution_id} has no node {outcome.node_id!r}",
                            node_id=outcome.node_id,
                        )
                    if lease_owner is not None and node.lease_owner not in (None, lease_owner):
                        raise Conflict(
                            f"node {outcome.node_id!r} is leased to another orchestrator",
                            field="lease_owner",
                        )
                    to = NodeStatus.COMPLETED if outcome.ok else NodeStatus.FAILED
                    check_node_transition(run.owner(node.node_id), node.status, to)
                    if outcome.ok:
                        node.result = outcome.result
                        rnd.move(node, NodeStatus.COMPLETED)
                    else:
                        rnd.fail(node, outcome.error or "failed by the orchestrator")
                await self._finish_round(tx, rnd, blocked_all=False)
                return run.ex.snapshot(counts=run.counts)

    def job_node(self, job_id: UUID) -> UUID | None:
        """The cached execution whose running node runs this job, if any."""
        for execution_id, run in self._runs.items():
            for node_id in run.running:
                if run.nodes[node_id].job_id == job_id:
                    return execution_id
        return None


def node_job(node: PlanNode, repo: str) -> NewJob:
    """The job that runs a plan node. An agent task gets the node's claims and mode, which
    its claims gate enforces, and the execution's repository: always what the scheduler
    locked, never what the payload says (plan validation refuses a payload that differs).
    An execution on a plain name gives an agent task no repository it could run in, so the
    job's own validation refuses it."""
    payload = dict(node.payload)
    if node.job_type in AGENT_JOB_TYPES:
        payload["claims"] = list(node.claims)
        payload["mode"] = node.mode.value
        payload["repo"] = repo
    issue_ref = payload.get("issue_ref")
    return NewJob(
        type=node.job_type,
        payload=payload,
        priority=max(MIN_PRIORITY, min(MAX_PRIORITY, node.priority)),
        issue_ref=issue_ref if isinstance(issue_ref, str) else None,
        agent_profile=node.agent_profile,
    )
