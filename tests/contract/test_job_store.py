"""The job store contract, run on SQLite and on Postgres: submission, reads, cancel, retry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.errors import Conflict, InvalidRequest, InvalidTransition, NotFound
from stitchwork.runtime.engine import Engine
from tests.contract.helpers import event_types

LEASE = timedelta(seconds=30)
ACTOR = "test"


async def _submit(engine: Engine, ws: uuid.UUID, type_: str = "noop", **kw: object) -> Job:
    payload = kw.pop("payload", {"command": "true"} if type_ == "shell" else {})
    sub = await engine.jobs.submit(ws, NewJob(type_, payload, **kw), actor=ACTOR)  # type: ignore[arg-type]
    return sub.job


async def _start(engine: Engine, job: Job, worker: str = "w1") -> Job:
    """Reserve ``job`` (the only queued one) for ``worker``."""
    (running,) = await engine.queue.reserve(worker, 1, LEASE)
    assert running.id == job.id
    return running


async def _completed(engine: Engine, ws: uuid.UUID) -> Job:
    job = await _start(engine, await _submit(engine, ws))
    done = await engine.store.complete_job(job.id, "w1", {"ok": True})
    assert done is not None
    return done


async def _failed(engine: Engine, ws: uuid.UUID, **kw: object) -> Job:
    job = await _start(engine, await _submit(engine, ws, **kw))
    failed = await engine.store.fail_job(
        job.id, "w1", error="boom", result={"exit_code": 1}, retry_after=None
    )
    assert failed is not None
    return failed


# -- submission --------------------------------------------------------------------------------


async def test_submitted_job_is_queued_with_created_and_queued_events(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    sub = await engine.jobs.submit(
        workspace_id, NewJob("noop", {"k": 1}, priority=5, issue_ref="gh#1"), actor=ACTOR
    )
    assert sub.created
    job = sub.job
    assert (job.status, job.attempt, job.version, job.last_event_seq) == (JobStatus.QUEUED, 1, 1, 2)
    assert (job.priority, job.payload, job.issue_ref, job.queue_name) == (
        5,
        {"k": 1},
        "gh#1",
        "default",
    )
    assert job.max_attempts == engine.settings.max_attempts
    assert job.run_after is not None
    assert job.run_after == job.created_at
    events = await engine.store.list_events(job.id)
    assert [(e.seq, e.type, e.actor) for e in events] == [
        (1, "job.created", ACTOR),
        (2, "job.queued", ACTOR),
    ]
    assert events[0].payload["status"] == "pending"
    assert events[1].payload == {
        "status": "queued",
        "attempt": 1,
        "queue": "default",
        "run_after": job.run_after.isoformat(),
    }
    assert await engine.store.get_job(job.id) == job  # what submit returned is what is stored


async def test_idempotency_key_returns_the_existing_job(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    first = await engine.jobs.submit(workspace_id, NewJob("noop", idempotency_key="k1"), actor="a")
    again = await engine.jobs.submit(workspace_id, NewJob("noop", idempotency_key="k1"), actor="b")
    assert first.created
    assert not again.created
    assert again.job == first.job
    assert len(await engine.store.list_jobs(workspace_id)) == 1
    assert await event_types(engine, first.job.id) == ["job.created", "job.queued"]


async def test_idempotency_key_reused_for_another_request_is_a_conflict_and_stores_nothing(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    first = await engine.jobs.submit(workspace_id, NewJob("noop", idempotency_key="k1"), actor="a")
    with pytest.raises(Conflict) as raised:
        await engine.jobs.submit_many(
            workspace_id,
            [NewJob("noop"), NewJob("sleep", {"seconds": 1}, idempotency_key="k1")],
            actor="b",
        )
    assert "already used for a different request" in raised.value.message
    assert [j.id for j in await engine.store.list_jobs(workspace_id)] == [first.job.id]


async def test_idempotency_key_repeated_within_one_batch_creates_one_job(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    subs = await engine.jobs.submit_many(
        workspace_id,
        [
            NewJob("noop", idempotency_key="same"),
            NewJob("noop"),
            NewJob("noop", idempotency_key="same"),
        ],
        actor=ACTOR,
    )
    assert [s.created for s in subs] == [True, True, False]
    assert subs[2].job.id == subs[0].job.id
    assert len(await engine.store.list_jobs(workspace_id)) == 2


async def test_idempotency_keys_are_scoped_to_their_workspace(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    other, _ = await engine.auth.ensure_workspace("other")
    a = await engine.jobs.submit(workspace_id, NewJob("noop", idempotency_key="k"), actor=ACTOR)
    b = await engine.jobs.submit(other.id, NewJob("noop", idempotency_key="k"), actor=ACTOR)
    assert a.created
    assert b.created
    assert a.job.id != b.job.id


async def test_batch_with_one_invalid_job_stores_nothing(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await engine.jobs.submit_many(
            workspace_id,
            [NewJob("noop"), NewJob("shell", {"command": ""}), NewJob("noop")],
            actor=ACTOR,
        )
    assert info.value.field == "payload.command"
    assert await engine.store.list_jobs(workspace_id) == []


@pytest.mark.parametrize(
    ("new", "field"),
    [
        (NewJob("noop", priority=1001), "priority"),
        (NewJob("noop", priority=-1001), "priority"),
        (NewJob("noop", max_attempts=101), "max_attempts"),
        (NewJob("noop", run_after=datetime(2030, 1, 1)), "run_after"),  # naive on purpose
        (NewJob("nope"), "type"),
    ],
)
async def test_invalid_submission_is_refused_with_its_field(
    engine: Engine, workspace_id: uuid.UUID, new: NewJob, field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await engine.jobs.submit(workspace_id, new, actor=ACTOR)
    assert info.value.field == field
    assert await engine.store.list_jobs(workspace_id) == []


async def test_run_after_in_the_past_is_clamped_to_now(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id, run_after=datetime(2000, 1, 1, tzinfo=UTC))
    assert job.run_after == job.created_at


# -- reads -------------------------------------------------------------------------------------


async def test_get_raises_not_found_and_find_returns_none_for_unknown_or_foreign_jobs(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    other, _ = await engine.auth.ensure_workspace("other")
    job = await _submit(engine, workspace_id)
    unknown = uuid.uuid4()
    assert await engine.store.find_job(unknown) is None
    assert await engine.store.find_job(job.id, workspace_id=other.id) is None
    with pytest.raises(NotFound) as info:
        await engine.store.get_job(unknown)
    assert info.value.fields == {"job_id": str(unknown)}
    with pytest.raises(NotFound):
        await engine.jobs.get(other.id, job.id)
    assert (await engine.jobs.get(workspace_id, job.id)).id == job.id


async def test_list_jobs_is_newest_first_and_filters_by_status_type_and_issue(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    other, _ = await engine.auth.ensure_workspace("other")
    a = await _submit(engine, workspace_id, "noop", issue_ref="gh#1")
    b = await _submit(engine, workspace_id, "sleep", issue_ref="gh#2")
    c = await _submit(engine, workspace_id, "noop", issue_ref="gh#1")
    await _submit(engine, other.id, "noop", issue_ref="gh#1")
    await engine.jobs.cancel(workspace_id, b.id, actor=ACTOR)

    async def ids(**filters: object) -> list[uuid.UUID]:
        return [j.id for j in await engine.jobs.list_jobs(workspace_id, **filters)]  # type: ignore[arg-type]

    assert await ids() == [c.id, b.id, a.id]
    assert await ids(status=JobStatus.QUEUED) == [c.id, a.id]
    assert await ids(status=JobStatus.CANCELLED) == [b.id]
    assert await ids(status=JobStatus.RUNNING) == []
    assert await ids(type_="sleep") == [b.id]
    assert await ids(issue_ref="gh#1") == [c.id, a.id]
    assert await ids(type_="noop", status=JobStatus.QUEUED, issue_ref="gh#2") == []
    assert await ids(limit=2) == [c.id, b.id]


async def test_keyset_pagination_visits_every_job_once_in_order(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    subs = await engine.jobs.submit_many(workspace_id, [NewJob("noop")] * 7, actor=ACTOR)
    expected = sorted((s.job.id for s in subs), reverse=True)
    pages: list[list[uuid.UUID]] = []
    before = None
    while True:
        page = await engine.jobs.list_jobs(workspace_id, before=before, limit=3)
        if not page:
            break
        pages.append([j.id for j in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == expected


async def test_events_can_be_read_after_a_sequence_number(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id)
    await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
    assert [e.seq for e in await engine.store.list_events(job.id, after=1)] == [2, 3]
    assert [e.type for e in await engine.jobs.events(workspace_id, job.id, after=2)] == [
        "job.cancelled"
    ]
    other, _ = await engine.auth.ensure_workspace("other")
    with pytest.raises(NotFound):
        await engine.jobs.events(other.id, job.id)


async def test_count_by_status_counts_every_status(engine: Engine, workspace_id: uuid.UUID) -> None:
    await _completed(engine, workspace_id)
    cancelled = await _submit(engine, workspace_id)
    await engine.jobs.cancel(workspace_id, cancelled.id, actor=ACTOR)
    await _submit(engine, workspace_id)
    await _submit(engine, workspace_id)
    counts = await engine.store.count_by_status(workspace_id)
    assert counts == {
        JobStatus.PENDING: 0,
        JobStatus.QUEUED: 2,
        JobStatus.RUNNING: 0,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 1,
    }
    other, _ = await engine.auth.ensure_workspace("other")
    assert sum((await engine.store.count_by_status(other.id)).values()) == 0


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_moves_a_queued_job_to_cancelled_with_an_event(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id)
    cancelled = await engine.jobs.cancel(workspace_id, job.id, actor="alice", reason="not needed")
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.version == job.version + 1
    assert cancelled.completed_at is not None
    assert await engine.store.get_job(job.id) == cancelled
    (event,) = await engine.store.list_events(job.id, after=2)
    assert (event.seq, event.type, event.actor) == (3, "job.cancelled", "alice")
    assert event.payload == {
        "status": "cancelled",
        "attempt": 1,
        "previous_status": "queued",
        "reason": "not needed",
    }


async def test_cancel_of_a_running_job_drops_its_lease(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _start(engine, await _submit(engine, workspace_id))
    cancelled, previous = await engine.store.cancel_job(job.id, workspace_id=None, actor=ACTOR)
    assert previous is JobStatus.RUNNING
    assert (cancelled.status, cancelled.lease_owner, cancelled.lease_expires_at) == (
        JobStatus.CANCELLED,
        None,
        None,
    )


@pytest.mark.parametrize("ended", ["completed", "failed", "cancelled"])
async def test_cancel_of_an_ended_job_raises_invalid_transition_and_changes_nothing(
    engine: Engine, workspace_id: uuid.UUID, ended: str
) -> None:
    if ended == "completed":
        job = await _completed(engine, workspace_id)
    elif ended == "failed":
        job = await _failed(engine, workspace_id)
    else:
        job = await _submit(engine, workspace_id)
        job = await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
    with pytest.raises(InvalidTransition) as info:
        await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
    assert (info.value.from_, info.value.to) == (ended, "cancelled")
    assert "already ended" in info.value.message
    assert await engine.store.get_job(job.id) == job
    assert len(await engine.store.list_events(job.id)) == job.last_event_seq


async def test_cancel_of_a_foreign_or_unknown_job_is_not_found(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    other, _ = await engine.auth.ensure_workspace("other")
    job = await _submit(engine, workspace_id)
    with pytest.raises(NotFound):
        await engine.jobs.cancel(other.id, job.id, actor=ACTOR)
    with pytest.raises(NotFound):
        await engine.jobs.cancel(workspace_id, uuid.uuid4(), actor=ACTOR)
    assert (await engine.store.get_job(job.id)).status is JobStatus.QUEUED


# -- retry -------------------------------------------------------------------------------------


async def test_retry_of_a_failed_job_queues_a_new_attempt(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    failed = await _failed(engine, workspace_id, max_attempts=1)
    assert (failed.status, failed.error, failed.result) == (
        JobStatus.FAILED,
        "boom",
        {"exit_code": 1},
    )
    retried = await engine.jobs.retry(workspace_id, failed.id, actor="bob")
    assert (retried.status, retried.attempt, retried.version) == (
        JobStatus.QUEUED,
        2,
        failed.version + 1,
    )
    # The budget grows with a manual retry, so the new attempt is not failed at once.
    assert retried.max_attempts == 2
    assert (retried.error, retried.result, retried.completed_at, retried.started_at) == (
        None,
        None,
        None,
        None,
    )
    event = (await engine.store.list_events(failed.id))[-1]
    assert (event.type, event.actor) == ("job.retried", "bob")
    assert event.payload == {
        "status": "queued",
        "attempt": 2,
        "previous_status": "failed",
        "reason": "manual",
    }
    (again,) = await engine.queue.reserve("w2", 5, LEASE)
    assert (again.id, again.attempt) == (failed.id, 2)


async def test_retry_of_a_cancelled_job_queues_a_new_attempt(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _submit(engine, workspace_id)
    await engine.jobs.cancel(workspace_id, job.id, actor=ACTOR)
    retried = await engine.jobs.retry(workspace_id, job.id, actor=ACTOR)
    assert (retried.status, retried.attempt) == (JobStatus.QUEUED, 2)
    assert (await engine.store.list_events(job.id))[-1].payload["previous_status"] == "cancelled"


@pytest.mark.parametrize("state", ["queued", "running", "completed"])
async def test_retry_of_a_job_that_did_not_fail_raises_invalid_transition(
    engine: Engine, workspace_id: uuid.UUID, state: str
) -> None:
    if state == "completed":
        job = await _completed(engine, workspace_id)
    else:
        job = await _submit(engine, workspace_id)
        if state == "running":
            job = await _start(engine, job)
    with pytest.raises(InvalidTransition) as info:
        await engine.jobs.retry(workspace_id, job.id, actor=ACTOR)
    assert (info.value.from_, info.value.to) == (state, "queued")
    assert "only failed or cancelled jobs can be retried" in info.value.message
    assert await engine.store.get_job(job.id) == job
