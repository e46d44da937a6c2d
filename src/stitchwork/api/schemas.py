"""Wire models: ``*Create`` come in, ``*Public`` go out. Never the domain or row classes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from stitchwork.domain.events import Event
from stitchwork.domain.jobs import MAX_PRIORITY, MIN_PRIORITY, Job, JobStatus
from stitchwork.domain.steps import Step, StepPhase, StepStatus, StepType
from stitchwork.queue.base import QueueInfo


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100, description="a registered job type")
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="higher first")
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    run_after: datetime | None = Field(default=None, description="do not start before (UTC)")
    issue_ref: str | None = Field(default=None, max_length=300)
    agent_profile: str | None = Field(default=None, max_length=100)


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    workspace_id: UUID
    type: str
    status: JobStatus
    queue: str = Field(validation_alias=AliasChoices("queue", "queue_name"))
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
    issue_ref: str | None
    agent_profile: str | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls.model_validate(job)


class JobPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="global, monotonic")
    job_id: UUID | None
    seq: int = Field(description="1, 2, 3, ... per job, without gaps")
    type: str
    step_id: UUID | None
    actor: str
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: Event) -> EventPublic:
        return cls.model_validate(event)


class StepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    duration_s: float | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def of(cls, step: Step) -> StepPublic:
        return cls.model_validate(step)


class JobDetailPublic(JobPublic):
    steps: list[StepPublic]


class QueuePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    paused: bool
    queued: int
    running: int

    @classmethod
    def of(cls, info: QueueInfo) -> QueuePublic:
        return cls.model_validate(info)
