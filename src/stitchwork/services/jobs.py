"""Submit, read, cancel and retry jobs."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import structlog

from stitchwork.config import Settings
from stitchwork.domain.events import Event
from stitchwork.domain.guards import AGENT_JOB_TYPES
from stitchwork.domain.jobs import MAX_PRIORITY, MIN_PRIORITY, Job, JobStatus, NewJob
from stitchwork.domain.steps import Step
from stitchwork.errors import InvalidRequest
from stitchwork.queue.base import QueueBackend
from stitchwork.runner.sandbox import JobConfinement
from stitchwork.services.agent_tasks import check_agent_task
from stitchwork.services.job_types import JobTypeCatalog
from stitchwork.storage.jobs import JobSpec, SqlJobStore, Submitted
from stitchwork.storage.steps import SqlStepStore

log = structlog.get_logger(__name__)

MAX_BATCH = 10_000
CONFINED_JOB_TYPES = frozenset({"shell", *AGENT_JOB_TYPES})  # they start commands


class JobService:
    def __init__(
        self,
        store: SqlJobStore,
        steps: SqlStepStore,
        queue: QueueBackend,
        catalog: JobTypeCatalog,
        settings: Settings,
        *,
        confinement: JobConfinement | None = None,
    ) -> None:
        self.store = store
        self.step_store = steps
        self.queue = queue
        self.catalog = catalog
        self.settings = settings
        # What the commands of jobs may reach; None: no checks (tests of the service alone).
        self.confinement = confinement

    def _check_confinement(self, job_type: str, payload: dict[str, object]) -> None:
        """Refuse, before anything is stored, a job whose commands could not be confined: a
        repository or directory outside the repository roots (403, not saying whether it
        exists) or, with the sandbox on, no working bubblewrap here (503, saying what to do)."""
        confinement = self.confinement
        if confinement is None or job_type not in CONFINED_JOB_TYPES:
            return
        field = "repo" if job_type in AGENT_JOB_TYPES else "cwd"
        path = payload.get(field)
        if isinstance(path, str):
            confinement.inside_roots(path, field=f"payload.{field}")
        confinement.sandbox.check()

    def spec(self, new: NewJob) -> JobSpec:
        """Validate a new job and resolve its defaults (queue, attempts); raises
        ``InvalidRequest``."""
        payload = self.catalog.validate(new.type, new.payload)
        self._check_confinement(new.type, payload)
        if new.type in AGENT_JOB_TYPES:
            check_agent_task(payload, new.agent_profile, job_type=new.type)
        if not MIN_PRIORITY <= new.priority <= MAX_PRIORITY:
            raise InvalidRequest(
                f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}", field="priority"
            )
        max_attempts = self.settings.max_attempts if new.max_attempts is None else new.max_attempts
        if not 1 <= max_attempts <= 100:
            raise InvalidRequest("max_attempts must be between 1 and 100", field="max_attempts")
        if new.run_after is not None and new.run_after.tzinfo is None:
            raise InvalidRequest("run_after must include a timezone", field="run_after")
        return JobSpec(
            new=NewJob(
                type=new.type,
                payload=payload,
                priority=new.priority,
                max_attempts=max_attempts,
                idempotency_key=new.idempotency_key,
                run_after=new.run_after,
                issue_ref=new.issue_ref,
                agent_profile=new.agent_profile,
                metadata=new.metadata,
            ),
            queue_name=self.settings.queue_for(new.type),
            max_attempts=max_attempts,
        )

    async def submit(self, workspace_id: UUID, new: NewJob, *, actor: str) -> Submitted:
        """Create one job (or return the existing one for a known idempotency key)."""
        return (await self.submit_many(workspace_id, [new], actor=actor))[0]

    async def submit_many(
        self, workspace_id: UUID, jobs: Sequence[NewJob], *, actor: str
    ) -> list[Submitted]:
        """Create many jobs in one transaction; all are validated before any is stored."""
        if len(jobs) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} jobs per batch", field="jobs")
        specs = [self.spec(new) for new in jobs]
        submitted = await self.store.create_jobs(workspace_id, specs, actor=actor)
        created = sum(s.created for s in submitted)
        if created:  # workers were woken by the store's transaction
            log.debug("jobs_submitted", count=created, workspace_id=str(workspace_id))
        return submitted

    async def get(self, workspace_id: UUID, job_id: UUID) -> Job:
        return await self.store.get_job(job_id, workspace_id=workspace_id)

    async def list_jobs(
        self,
        workspace_id: UUID,
        *,
        status: JobStatus | None = None,
        type_: str | None = None,
        issue_ref: str | None = None,
        before: UUID | None = None,
        limit: int = 50,
    ) -> list[Job]:
        return await self.store.list_jobs(
            workspace_id,
            status=status,
            type_=type_,
            issue_ref=issue_ref,
            before=before,
            limit=limit,
        )

    async def events(
        self,
        workspace_id: UUID,
        job_id: UUID,
        *,
        after: int = 0,
        limit: int = 1000,
        types: Sequence[str] = (),
    ) -> list[Event]:
        await self.store.get_job(job_id, workspace_id=workspace_id)  # 404 for a foreign job
        return await self.store.list_events(job_id, after=after, limit=limit, types=types)

    async def workspace_events(
        self,
        workspace_id: UUID,
        *,
        after_id: int = 0,
        limit: int = 1000,
        types: Sequence[str] = (),
        job_id: UUID | None = None,
    ) -> list[Event]:
        return await self.store.list_workspace_events(
            workspace_id, after_id=after_id, limit=limit, types=types, job_id=job_id
        )

    async def steps(self, workspace_id: UUID, job_id: UUID) -> list[Step]:
        await self.store.get_job(job_id, workspace_id=workspace_id)
        return await self.step_store.list_steps(job_id)

    async def step(self, workspace_id: UUID, job_id: UUID, step_id: UUID) -> Step:
        await self.store.get_job(job_id, workspace_id=workspace_id)
        return await self.step_store.get_step(job_id, step_id)

    async def cancel(
        self, workspace_id: UUID, job_id: UUID, *, actor: str, reason: str | None = None
    ) -> Job:
        job, previous = await self.store.cancel_job(
            job_id, workspace_id=workspace_id, actor=actor, reason=reason
        )
        if previous is JobStatus.RUNNING:
            await self.queue.notify_cancelled([job.id])
        log.info("job_cancelled", job_id=str(job.id), previous_status=previous.value)
        return job

    async def retry(self, workspace_id: UUID, job_id: UUID, *, actor: str) -> Job:
        job = await self.store.retry_job(job_id, workspace_id=workspace_id, actor=actor)
        log.info("job_retried", job_id=str(job.id), attempt=job.attempt)
        return job
