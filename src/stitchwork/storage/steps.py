"""``job_steps``: the tracked steps of a job, each change with its event in one transaction.

Only the worker holding the job's lease may write its steps: a worker that lost the job (it
was cancelled or taken over) gets ``JobLost`` and must stop.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update

from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import JobStatus
from stitchwork.domain.steps import (
    Step,
    StepPhase,
    StepStatus,
    StepType,
    check_step_transition,
    tail,
)
from stitchwork.errors import Conflict, InvalidTransition, NotFound
from stitchwork.storage.rows import EventWriter, Tx, event_row, insert_events
from stitchwork.storage.tables import job_steps, runner_jobs
from stitchwork.storage.types import new_id

OUTPUT_TAIL_CHARS = 8_000


class JobLost(Conflict):
    """The job is no longer running under this worker's lease."""

    title = "Job lost"


def step_from_row(row: Any) -> Step:
    return Step(
        id=row["id"],
        job_id=row["job_id"],
        ordinal=row["ordinal"],
        name=row["name"],
        phase=StepPhase(row["phase"]),
        type=StepType(row["type"]),
        status=StepStatus(row["status"]),
        attempt=row["attempt"],
        output_tail=row["output_tail"],
        error=row["error"],
        tokens_input=row["tokens_input"],
        tokens_output=row["tokens_output"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
    )


class SqlStepStore:
    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        self.db = writer.db
        self.clock = writer.clock

    # -- helpers -----------------------------------------------------------------------------

    async def _claim_seqs(
        self, tx: Tx, job_id: UUID, worker_id: str, count: int
    ) -> tuple[int, UUID, int]:
        """Reserve ``count`` event seqs on a job this worker holds: (first seq, workspace,
        attempt). The UPDATE also serialises concurrent writers of the same job."""
        row = (
            await tx.conn.execute(
                update(runner_jobs)
                .where(
                    runner_jobs.c.id == job_id,
                    runner_jobs.c.status == JobStatus.RUNNING.value,
                    runner_jobs.c.lease_owner == worker_id,
                )
                .values(last_event_seq=runner_jobs.c.last_event_seq + count)
                .returning(
                    runner_jobs.c.last_event_seq,
                    runner_jobs.c.workspace_id,
                    runner_jobs.c.attempt,
                )
            )
        ).first()
        if row is None:
            raise JobLost(
                f"job {job_id} is no longer running under worker {worker_id}",
                job_id=str(job_id),
            )
        return row.last_event_seq - count + 1, row.workspace_id, row.attempt

    async def _held_step(
        self, tx: Tx, step_id: UUID, worker_id: str, *, running: bool = False
    ) -> Step:
        """The step, locked, after checking that ``worker_id`` still holds its job (``JobLost``
        otherwise: a cancelled job's worker learns that first, whatever the step's state).
        ``running=True`` also requires the step to be running (output and events)."""
        row = (
            (
                await tx.conn.execute(
                    select(job_steps).where(job_steps.c.id == step_id).with_for_update()
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"step {step_id} not found", step_id=str(step_id))
        step = step_from_row(row)
        await self._claim_seqs(tx, step.job_id, worker_id, 0)
        if running and step.status is not StepStatus.RUNNING:
            raise InvalidTransition(
                step.id,
                step.status.value,
                StepStatus.RUNNING.value,
                reason="output and events are recorded on running steps only",
            )
        return step

    async def _event(
        self,
        tx: Tx,
        step: Step,
        worker_id: str,
        type_: EventType,
        payload: dict[str, Any],
    ) -> None:
        seq, workspace_id, _ = await self._claim_seqs(tx, step.job_id, worker_id, 1)
        now = self.clock.now()
        await insert_events(
            tx,
            [
                event_row(
                    step.job_id,
                    seq,
                    type_,
                    worker_id,
                    {"step_id": str(step.id), "ordinal": step.ordinal, **payload},
                    now,
                    workspace_id=workspace_id,
                    step_id=step.id,
                )
            ],
        )

    # -- writes ------------------------------------------------------------------------------

    async def add_step(
        self,
        job_id: UUID,
        worker_id: str,
        *,
        name: str,
        phase: StepPhase,
        type_: StepType,
        start: bool = True,
    ) -> Step:
        """Append a step to the job (``running`` with ``step.started``, or ``pending``)."""
        now = self.clock.now()
        async with self.writer.write() as tx:
            seq, workspace_id, attempt = await self._claim_seqs(
                tx, job_id, worker_id, 1 if start else 0
            )
            ordinal = (
                await tx.conn.execute(
                    select(func.coalesce(func.max(job_steps.c.ordinal), 0)).where(
                        job_steps.c.job_id == job_id
                    )
                )
            ).scalar_one() + 1
            row = {
                "id": new_id(),
                "job_id": job_id,
                "ordinal": ordinal,
                "name": name,
                "phase": phase.value,
                "type": type_.value,
                "status": (StepStatus.RUNNING if start else StepStatus.PENDING).value,
                "attempt": attempt,
                "output_tail": None,
                "error": None,
                "tokens_input": None,
                "tokens_output": None,
                "created_at": now,
                "started_at": now if start else None,
                "completed_at": None,
            }
            await tx.conn.execute(job_steps.insert().values(**row))
            step = step_from_row(row)
            if start:
                await insert_events(
                    tx,
                    [
                        event_row(
                            job_id,
                            seq,
                            EventType.STEP_STARTED,
                            worker_id,
                            _describe(step),
                            now,
                            workspace_id=workspace_id,
                            step_id=step.id,
                        )
                    ],
                )
        return step

    async def start_step(self, step_id: UUID, worker_id: str) -> Step:
        now = self.clock.now()
        async with self.writer.write() as tx:
            step = await self._held_step(tx, step_id, worker_id)
            check_step_transition(step.id, step.status, StepStatus.RUNNING)
            await self._event(tx, step, worker_id, EventType.STEP_STARTED, _describe(step))
            return await self._update(tx, step_id, status=StepStatus.RUNNING.value, started_at=now)

    async def finish_step(
        self,
        step_id: UUID,
        worker_id: str,
        status: StepStatus,
        *,
        error: str | None = None,
        reason: str | None = None,
    ) -> Step:
        """Complete, fail or skip a step (``step.completed|failed|skipped``)."""
        now = self.clock.now()
        event_type = {
            StepStatus.COMPLETED: EventType.STEP_COMPLETED,
            StepStatus.FAILED: EventType.STEP_FAILED,
            StepStatus.SKIPPED: EventType.STEP_SKIPPED,
        }.get(status)
        if event_type is None:
            raise ValueError(f"finish_step takes a terminal status, not {status.value}")
        async with self.writer.write() as tx:
            step = await self._held_step(tx, step_id, worker_id)
            check_step_transition(step.id, step.status, status)
            duration = (now - step.started_at).total_seconds() if step.started_at else None
            payload: dict[str, Any] = {"name": step.name, "duration_s": duration}
            if step.tokens_input is not None or step.tokens_output is not None:
                payload.update(tokens_input=step.tokens_input, tokens_output=step.tokens_output)
            if error is not None:
                payload["error"] = error
            if reason is not None:
                payload["reason"] = reason
            await self._event(tx, step, worker_id, event_type, payload)
            return await self._update(
                tx, step_id, status=status.value, completed_at=now, error=error
            )

    async def append_output(
        self, step_id: UUID, worker_id: str, chunk: str, *, dropped_chars: int = 0
    ) -> None:
        """Record a chunk of the step's output (``step.output``) and keep its tail."""
        await self.append_outputs(step_id, worker_id, [chunk], dropped_chars=dropped_chars)

    async def append_outputs(
        self, step_id: UUID, worker_id: str, chunks: list[str], *, dropped_chars: int = 0
    ) -> None:
        """One ``step.output`` event per chunk, all in one transaction."""
        if not chunks:
            return
        now = self.clock.now()
        async with self.writer.write() as tx:
            step = await self._held_step(tx, step_id, worker_id, running=True)
            first, workspace_id, _ = await self._claim_seqs(tx, step.job_id, worker_id, len(chunks))
            rows = []
            for i, chunk in enumerate(chunks):
                payload: dict[str, Any] = {"step_id": str(step.id), "ordinal": step.ordinal}
                payload["chunk"] = chunk
                if dropped_chars and i == 0:
                    payload["dropped_chars"] = dropped_chars
                rows.append(
                    event_row(
                        step.job_id,
                        first + i,
                        EventType.STEP_OUTPUT,
                        worker_id,
                        payload,
                        now,
                        workspace_id=workspace_id,
                        step_id=step.id,
                    )
                )
            await insert_events(tx, rows)
            text = (step.output_tail or "") + "".join(chunks)[-OUTPUT_TAIL_CHARS:]
            await self._update(tx, step_id, output_tail=tail(text, OUTPUT_TAIL_CHARS))

    async def record_tokens(
        self, step_id: UUID, worker_id: str, tokens_input: int, tokens_output: int
    ) -> Step:
        """Add token usage to an ``ai_action`` step (``ai.tokens_used``)."""
        if tokens_input < 0 or tokens_output < 0:
            raise ValueError("token counts cannot be negative")
        async with self.writer.write() as tx:
            step = await self._held_step(tx, step_id, worker_id, running=True)
            if step.type is not StepType.AI_ACTION:
                raise Conflict(
                    f"token usage belongs to ai_action steps; step {step.id} is {step.type.value}"
                )
            total_in = (step.tokens_input or 0) + tokens_input
            total_out = (step.tokens_output or 0) + tokens_output
            await self._event(
                tx,
                step,
                worker_id,
                EventType.AI_TOKENS_USED,
                {
                    "tokens_input": tokens_input,
                    "tokens_output": tokens_output,
                    "total_input": total_in,
                    "total_output": total_out,
                },
            )
            return await self._update(tx, step_id, tokens_input=total_in, tokens_output=total_out)

    async def record_step_event(
        self, step_id: UUID, worker_id: str, type_: EventType, payload: dict[str, Any]
    ) -> None:
        """Any other event about a step (``step.progress``, ``ai.tool_called``, …)."""
        async with self.writer.write() as tx:
            step = await self._held_step(tx, step_id, worker_id, running=True)
            await self._event(tx, step, worker_id, type_, payload)

    async def _update(self, tx: Tx, step_id: UUID, **values: Any) -> Step:
        row = (
            (
                await tx.conn.execute(
                    update(job_steps)
                    .where(job_steps.c.id == step_id)
                    .values(**values)
                    .returning(*job_steps.c)
                )
            )
            .mappings()
            .one()
        )
        return step_from_row(row)

    # -- reads -------------------------------------------------------------------------------

    async def list_steps(self, job_id: UUID) -> list[Step]:
        stmt = select(job_steps).where(job_steps.c.job_id == job_id).order_by(job_steps.c.ordinal)
        async with self.db.read() as conn:
            return [step_from_row(r) for r in (await conn.execute(stmt)).mappings()]

    async def get_step(self, job_id: UUID, step_id: UUID) -> Step:
        stmt = select(job_steps).where(job_steps.c.job_id == job_id, job_steps.c.id == step_id)
        async with self.db.read() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise NotFound(f"step {step_id} not found in job {job_id}", step_id=str(step_id))
        return step_from_row(row)


def _describe(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "phase": step.phase.value,
        "type": step.type.value,
        "attempt": step.attempt,
    }
