"""Steps of a job: phases, types, states and their legal transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from stitchwork.errors import InvalidTransition


class StepPhase(StrEnum):
    SETUP = "setup"
    EXECUTION = "execution"
    VALIDATION = "validation"
    CLEANUP = "cleanup"


class StepType(StrEnum):
    COMMAND = "command"
    AI_ACTION = "ai_action"
    GATE = "gate"
    ARTIFACT = "artifact"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


TERMINAL_STEP_STATUSES = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED})

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING, StepStatus.SKIPPED}),
    StepStatus.RUNNING: frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED}),
    StepStatus.COMPLETED: frozenset(),
    StepStatus.FAILED: frozenset(),
    StepStatus.SKIPPED: frozenset(),
}


def check_step_transition(step_id: object, from_: StepStatus, to: StepStatus) -> None:
    if to not in STEP_TRANSITIONS[from_]:
        reason = (
            f"the step already ended ({from_.value})"
            if from_ in TERMINAL_STEP_STATUSES
            else f"a {from_.value} step may move to "
            + ", ".join(sorted(s.value for s in STEP_TRANSITIONS[from_]))
        )
        raise InvalidTransition(step_id, from_.value, to.value, reason=reason)


@dataclass(frozen=True, slots=True)
class Step:
    """A snapshot of one ``job_steps`` row."""

    id: UUID
    job_id: UUID
    ordinal: int
    name: str
    phase: StepPhase
    type: StepType
    status: StepStatus
    attempt: int
    output_tail: str | None
    error: str | None
    tokens_input: int | None
    tokens_output: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()


def tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text`` (nothing for a limit of 0 or less)."""
    if limit <= 0:
        return ""
    return text[-limit:] if len(text) > limit else text
