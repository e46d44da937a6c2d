"""The runner job: its states, its legal transitions and its frozen snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from stitchwork.errors import InvalidTransition


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
RETRYABLE_JOB_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLABLE_JOB_STATUSES = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING})

# running -> queued covers the three ways a started job goes back to the queue: an automatic
# retry after a failed attempt, a lease that expired (worker lost) and a graceful release.
# failed/cancelled -> queued is a manual retry.
JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}


def can_transition(from_: JobStatus, to: JobStatus) -> bool:
    return to in JOB_TRANSITIONS[from_]


def check_transition(job_id: object, from_: JobStatus, to: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless ``from_ -> to`` is a legal job transition."""
    if not can_transition(from_, to):
        raise InvalidTransition(job_id, from_.value, to.value, reason=_why_not(from_, to))


def check_retry(job_id: object, from_: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless a job in ``from_`` may be retried by a user.

    Stricter than ``check_transition(from_, QUEUED)``: running -> queued is the worker's and the
    sweeper's re-queue, never a manual retry.
    """
    if from_ not in RETRYABLE_JOB_STATUSES:
        raise InvalidTransition(
            job_id,
            from_.value,
            JobStatus.QUEUED.value,
            reason=f"only failed or cancelled jobs can be retried; this one is {from_.value}",
        )


def _why_not(from_: JobStatus, to: JobStatus) -> str:
    if from_ in TERMINAL_JOB_STATUSES and to is JobStatus.CANCELLED:
        return f"the job already ended ({from_.value})"
    if to is JobStatus.QUEUED and from_ in {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING}:
        return f"only failed or cancelled jobs can be retried; this one is {from_.value}"
    if from_ is JobStatus.COMPLETED:
        return "a completed job is final"
    allowed = ", ".join(sorted(s.value for s in JOB_TRANSITIONS[from_])) or "nothing"
    return f"from {from_.value} a job may move to {allowed}"


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one ``runner_jobs`` row."""

    id: UUID
    workspace_id: UUID
    type: str
    status: JobStatus
    queue_name: str
    priority: int
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    progress_percent: int
    attempt: int
    max_attempts: int
    idempotency_key: str | None
    version: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    run_after: datetime | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    issue_ref: str | None = None
    agent_profile: str | None = None
    last_event_seq: int = 0
    execution_id: UUID | None = None  # set when the job runs a node of an execution
    node_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a caller asks for when it submits a job."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int | None = None
    idempotency_key: str | None = None
    run_after: datetime | None = None
    issue_ref: str | None = None
    agent_profile: str | None = None
    # Where the job came from, for its followers (the chat bridge puts {"chat": {"provider",
    # "channel", "thread"}} here); carried by the job.created event, not a column.
    metadata: dict[str, Any] | None = None


MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
