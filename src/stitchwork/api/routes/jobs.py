"""``/api/v1/jobs``: submit, list, show, cancel, retry, and a job's events.

Reading needs ``jobs:read``; cancel and retry ``jobs:write``; submitting (and retrying, which
submits again) needs ``jobs:submit:<type>`` of the job's type.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response, status

from stitchwork.api.deps import EngineDep, require, require_submit
from stitchwork.api.schemas import (
    EventPublic,
    JobCreate,
    JobDetailPublic,
    JobPage,
    JobPublic,
    StepPublic,
)
from stitchwork.api.streaming import MAX_SEQ
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.errors import InvalidRequest
from stitchwork.services.auth import Principal, Scope

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={200: {"description": "idempotent replay: the job created earlier with this key"}},
)
async def submit_job(
    body: JobCreate,
    engine: EngineDep,
    principal: Annotated[Principal, require_submit()],
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Submit a job. Repeating a request with the same idempotency key (body field or
    ``Idempotency-Key`` header) returns the job created the first time, with status 200.
    Needs ``jobs:submit:<type>`` for the submitted type."""
    principal.require_submit(body.type)
    key = body.idempotency_key
    if idempotency_key and key and idempotency_key != key:
        raise InvalidRequest(
            "the Idempotency-Key header and the idempotency_key field differ",
            field="idempotency_key",
        )
    submitted = await engine.jobs.submit(
        principal.workspace_id,
        NewJob(
            type=body.type,
            payload=body.payload,
            priority=body.priority,
            max_attempts=body.max_attempts,
            idempotency_key=key or idempotency_key,
            run_after=body.run_after,
            issue_ref=body.issue_ref,
            agent_profile=body.agent_profile,
        ),
        actor=principal.actor,
    )
    response.headers["Location"] = f"/api/v1/jobs/{submitted.job.id}"
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.of(submitted.job)


@router.get("", response_model=JobPage)
async def list_jobs(
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.JOBS_READ)],
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=100)] = None,
    issue_ref: Annotated[str | None, Query(max_length=300)] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Jobs of the caller's workspace, newest first."""
    before = None
    if cursor:
        try:
            before = UUID(cursor)
        except ValueError:
            raise InvalidRequest("cursor is not a valid page cursor", field="cursor") from None
    jobs = await engine.jobs.list_jobs(
        principal.workspace_id,
        status=status_,
        type_=type_,
        issue_ref=issue_ref,
        before=before,
        limit=limit + 1,  # one more than asked tells whether a next page exists
    )
    next_cursor = str(jobs[limit - 1].id) if len(jobs) > limit else None
    jobs = jobs[:limit]
    return JobPage(items=[JobPublic.of(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobDetailPublic)
async def get_job(
    job_id: UUID, engine: EngineDep, principal: Annotated[Principal, require(Scope.JOBS_READ)]
) -> JobDetailPublic:
    """One job with its steps."""
    job = await engine.jobs.get(principal.workspace_id, job_id)
    steps = await engine.jobs.steps(principal.workspace_id, job_id)
    return JobDetailPublic(
        **JobPublic.of(job).model_dump(), steps=[StepPublic.of(s) for s in steps]
    )


@router.get("/{job_id}/steps", response_model=list[StepPublic])
async def list_steps(
    job_id: UUID, engine: EngineDep, principal: Annotated[Principal, require(Scope.JOBS_READ)]
) -> list[StepPublic]:
    """The job's steps in order."""
    return [StepPublic.of(s) for s in await engine.jobs.steps(principal.workspace_id, job_id)]


@router.get("/{job_id}/steps/{step_id}", response_model=StepPublic)
async def get_step(
    job_id: UUID,
    step_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.JOBS_READ)],
) -> StepPublic:
    return StepPublic.of(await engine.jobs.step(principal.workspace_id, job_id, step_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(
    job_id: UUID, engine: EngineDep, principal: Annotated[Principal, require(Scope.JOBS_WRITE)]
) -> JobPublic:
    """Cancel a pending, queued or running job (a running handler is told to stop). 409 if
    the job already ended."""
    return JobPublic.of(
        await engine.jobs.cancel(principal.workspace_id, job_id, actor=principal.actor)
    )


@router.post("/{job_id}/retry", response_model=JobPublic)
async def retry_job(
    job_id: UUID, engine: EngineDep, principal: Annotated[Principal, require(Scope.JOBS_WRITE)]
) -> JobPublic:
    """Queue a failed or cancelled job again as a new attempt. 409 otherwise. A retry runs
    the job again, so it also needs the scope that submits the job's type."""
    principal.require_submit((await engine.jobs.get(principal.workspace_id, job_id)).type)
    return JobPublic.of(
        await engine.jobs.retry(principal.workspace_id, job_id, actor=principal.actor)
    )


@router.get("/{job_id}/events", response_model=list[EventPublic])
async def job_events(
    job_id: UUID,
    engine: EngineDep,
    principal: Annotated[Principal, require(Scope.JOBS_READ)],
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="only events with seq > after")] = 0,
    type_: Annotated[
        list[str] | None,
        Query(alias="type", description="event type or glob (step.*); repeatable"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[EventPublic]:
    """The job's events in ``seq`` order (a page of at most ``limit``; continue with
    ``after=<last seq>``)."""
    events = await engine.jobs.events(
        principal.workspace_id, job_id, after=after, limit=limit, types=tuple(type_ or ())
    )
    return [EventPublic.of(e) for e in events]
