"""Event types (dotted, as stored) and the frozen event record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class EventType(StrEnum):
    JOB_CREATED = "job.created"
    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_PROGRESS = "job.progress"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_RETRIED = "job.retried"
    JOB_REQUEUED = "job.requeued"
    STEP_STARTED = "step.started"
    STEP_PROGRESS = "step.progress"
    STEP_OUTPUT = "step.output"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_SKIPPED = "step.skipped"
    AI_TOOL_CALLED = "ai.tool_called"
    AI_TOKENS_USED = "ai.tokens_used"
    AI_ARTIFACT_CREATED = "ai.artifact_created"
    GATE_STARTED = "gate.started"
    GATE_PASSED = "gate.passed"
    GATE_FAILED = "gate.failed"
    EXECUTION_PLANNED = "execution.planned"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_PAUSED = "execution.paused"
    EXECUTION_RESUMED = "execution.resumed"
    EXECUTION_ABORTED = "execution.aborted"
    EXECUTION_COMPLETED = "execution.completed"
    EXECUTION_FAILED = "execution.failed"
    EXECUTION_DEADLOCK = "execution.deadlock"
    TASK_READY = "task.ready"
    TASK_STARTED = "task.started"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_SKIPPED = "task.skipped"  # a dependency failed (failure policy ``continue``)
    TASK_CANCELLED = "task.cancelled"  # the execution was aborted or failed fast
    LOCK_CONTENDED = "lock.contended"


TERMINAL_JOB_EVENTS = frozenset(
    {EventType.JOB_COMPLETED.value, EventType.JOB_FAILED.value, EventType.JOB_CANCELLED.value}
)


@dataclass(frozen=True, slots=True)
class Event:
    """One append-only ``job_events`` row."""

    id: int
    job_id: UUID | None
    seq: int
    type: str
    actor: str
    payload: dict[str, Any]
    created_at: datetime
    step_id: UUID | None = None
    execution_id: UUID | None = None
    workspace_id: UUID | None = None

    @property
    def is_job_terminal(self) -> bool:
        return self.type in TERMINAL_JOB_EVENTS
