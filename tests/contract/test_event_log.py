"""The event log on SQLite and Postgres: append-only in the database itself, every event
tagged with its workspace, and readable by job or workspace with type-glob filters."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Uuid, bindparam, delete, select, text, update
from sqlalchemy.exc import DBAPIError

from stitchwork.domain.events import Event
from stitchwork.domain.jobs import Job, NewJob
from stitchwork.domain.steps import StepPhase, StepStatus, StepType
from stitchwork.runtime.engine import Engine
from stitchwork.storage.tables import job_events, runner_jobs
from tests.conftest import Backend

LEASE = timedelta(seconds=30)
W1 = "worker-1"


async def _running_job(engine: Engine, ws: uuid.UUID) -> Job:
    await engine.jobs.submit(ws, NewJob("noop"), actor="test")
    (job,) = await engine.queue.reserve(W1, 1, LEASE)
    return job


async def _job_with_steps(engine: Engine, ws: uuid.UUID) -> Job:
    """A completed job whose log holds job, step, output and token events."""
    job = await _running_job(engine, ws)
    step = await engine.steps.add_step(
        job.id, W1, name="agent", phase=StepPhase.EXECUTION, type_=StepType.AI_ACTION
    )
    await engine.steps.append_outputs(step.id, W1, ["one\n", "two\n"])
    await engine.steps.record_tokens(step.id, W1, 10, 3)
    await engine.steps.finish_step(step.id, W1, StepStatus.COMPLETED)
    assert await engine.store.complete_job(job.id, W1, {"ok": True}) is not None
    return job


async def _raw_events(engine: Engine, job_id: uuid.UUID) -> list[dict[str, object]]:
    async with engine.db.read() as conn:
        rows = await conn.execute(
            select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
        )
        return [dict(r) for r in rows.mappings()]


async def _execute(engine: Engine, sql: str, **params: uuid.UUID) -> None:
    """Raw SQL in a write transaction (``:job_id`` bound as a UUID on both backends)."""
    statement = text(sql)
    for name, value in params.items():
        if f":{name}" in sql:
            statement = statement.bindparams(bindparam(name, value, type_=Uuid()))
    async with engine.db.begin() as conn:
        await conn.execute(statement)


# -- append-only -------------------------------------------------------------------------------

REFUSED_STATEMENTS = {
    "update-one": "UPDATE job_events SET type = 'job.tampered' WHERE job_id = :job_id AND seq = 1",
    "update-payload": "UPDATE job_events SET payload = payload WHERE job_id = :job_id",
    "delete-one": "DELETE FROM job_events WHERE job_id = :job_id AND seq = 1",
    "delete-all": "DELETE FROM job_events",
}


@pytest.mark.parametrize("sql", REFUSED_STATEMENTS.values(), ids=REFUSED_STATEMENTS.keys())
async def test_database_refuses_to_update_or_delete_events(
    engine: Engine, workspace_id: uuid.UUID, sql: str
) -> None:
    job = await _job_with_steps(engine, workspace_id)
    before = await _raw_events(engine, job.id)

    with pytest.raises(DBAPIError, match="append-only"):
        await _execute(engine, sql, job_id=job.id)

    assert await _raw_events(engine, job.id) == before


async def test_database_refuses_an_update_through_the_orm_layer_too(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _running_job(engine, workspace_id)
    before = await _raw_events(engine, job.id)
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.db.begin() as conn:
            await conn.execute(
                update(job_events).where(job_events.c.job_id == job.id).values(actor="mallory")
            )
    assert await _raw_events(engine, job.id) == before


async def test_refused_change_rolls_back_the_whole_transaction(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _running_job(engine, workspace_id)

    async def change_job_then_delete_its_events() -> None:
        async with engine.db.begin() as conn:
            await conn.execute(
                update(runner_jobs).where(runner_jobs.c.id == job.id).values(priority=99)
            )
            await conn.execute(delete(job_events).where(job_events.c.job_id == job.id))

    with pytest.raises(DBAPIError, match="append-only"):
        await change_job_then_delete_its_events()
    assert (await engine.store.get_job(job.id)).priority == job.priority


async def test_postgres_refuses_to_truncate_events(pg_backend: Backend) -> None:
    # SQLite has no TRUNCATE; its unqualified DELETE is refused above.
    engine = await pg_backend.open_engine()
    try:
        job = await _job_with_steps(engine, (await engine.auth.ensure_workspace("default"))[0].id)
        before = await _raw_events(engine, job.id)
        with pytest.raises(DBAPIError, match="append-only"):
            await _execute(engine, "TRUNCATE job_events CASCADE")
        assert await _raw_events(engine, job.id) == before
    finally:
        await engine.close()


async def test_appending_events_still_works_after_a_refused_change(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _running_job(engine, workspace_id)
    with pytest.raises(DBAPIError):
        await _execute(engine, "DELETE FROM job_events")
    assert await engine.store.report_progress(job.id, W1, 40)
    events = await engine.store.list_events(job.id)
    assert [(e.seq, e.type) for e in events][-1] == (4, "job.progress")


# -- workspace ---------------------------------------------------------------------------------


async def test_every_event_carries_its_jobs_workspace(engine: Engine) -> None:
    ws_a, _ = await engine.auth.ensure_workspace("a")
    ws_b, _ = await engine.auth.ensure_workspace("b")
    job_a = await _job_with_steps(engine, ws_a.id)
    job_b = await _job_with_steps(engine, ws_b.id)

    for job, ws in ((job_a, ws_a.id), (job_b, ws_b.id)):
        events = await engine.store.list_events(job.id)
        assert {e.type.split(".")[0] for e in events} == {"job", "step", "ai"}
        assert {e.workspace_id for e in events} == {ws}
        raw = await _raw_events(engine, job.id)
        assert {r["workspace_id"] for r in raw} == {ws}


# -- reading with filters ----------------------------------------------------------------------


def _types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


async def test_list_events_filters_by_type_glob(engine: Engine, workspace_id: uuid.UUID) -> None:
    job = await _job_with_steps(engine, workspace_id)
    steps = await engine.store.list_events(job.id, types=("step.*",))
    assert _types(steps) == [
        "step.started",
        "step.output",
        "step.output",
        "step.completed",
    ]
    assert [e.seq for e in steps] == [4, 5, 6, 8]  # seq order, with the job's own seqs

    both = await engine.store.list_events(job.id, types=("job.completed", "ai.*"))
    assert _types(both) == ["ai.tokens_used", "job.completed"]
    assert await engine.store.list_events(job.id, types=("gate.*",)) == []


async def test_list_events_pages_by_seq_with_a_type_filter(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _job_with_steps(engine, workspace_id)
    first = await engine.store.list_events(job.id, types=("step.*",), limit=2)
    rest = await engine.store.list_events(job.id, types=("step.*",), after=first[-1].seq)
    assert [e.seq for e in first] == [4, 5]
    assert [e.seq for e in rest] == [6, 8]


async def _insert_decoy(engine: Engine, job: Job, type_: str) -> None:
    """An event whose type differs from a real one only where LIKE has wildcards.

    Inserted like the store does it: the seq is claimed on the job row in the same
    transaction, so the job's log stays gapless."""
    async with engine.db.begin() as conn:
        seq = (
            await conn.execute(
                update(runner_jobs)
                .where(runner_jobs.c.id == job.id)
                .values(last_event_seq=runner_jobs.c.last_event_seq + 1)
                .returning(runner_jobs.c.last_event_seq)
            )
        ).scalar_one()
        await conn.execute(
            job_events.insert().values(
                job_id=job.id,
                workspace_id=job.workspace_id,
                seq=seq,
                type=type_,
                actor="test",
                payload={},
                created_at=engine.clock.now(),
            )
        )


async def test_type_filters_treat_like_wildcards_literally(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _job_with_steps(engine, workspace_id)
    for decoy in ("ai.tokensXused", "ai.tokens%used", "step.outputs"):
        await _insert_decoy(engine, job, decoy)

    async def by_job(*patterns: str) -> list[str]:
        return _types(await engine.store.list_events(job.id, types=patterns))

    async def by_workspace(*patterns: str) -> list[str]:
        return _types(await engine.store.list_workspace_events(workspace_id, types=patterns))

    for read in (by_job, by_workspace):
        assert await read("ai.tokens_used") == ["ai.tokens_used"]
        assert await read("ai.tokensXused") == ["ai.tokensXused"]
        assert await read("ai.tokens%used") == ["ai.tokens%used"]
        assert await read("ai.tokens%") == []
        assert await read("step.output") == ["step.output", "step.output"]
        # glob wildcards mean what they mean on the bus
        assert await read("ai.tokens?used") == [
            "ai.tokens_used",
            "ai.tokensXused",
            "ai.tokens%used",
        ]
        assert await read("step.output?") == ["step.outputs"]


async def test_type_filters_are_case_sensitive_like_the_bus(
    engine: Engine, workspace_id: uuid.UUID
) -> None:
    job = await _job_with_steps(engine, workspace_id)
    assert await engine.store.list_events(job.id, types=("STEP.*",)) == []
    assert await engine.store.list_workspace_events(workspace_id, types=("Job.Completed",)) == []


async def test_list_workspace_events_filters_by_after_id_type_and_job(engine: Engine) -> None:
    ws, _ = await engine.auth.ensure_workspace("mine")
    other_ws, _ = await engine.auth.ensure_workspace("theirs")
    first = await _job_with_steps(engine, ws.id)
    foreign = await _job_with_steps(engine, other_ws.id)
    second = await _job_with_steps(engine, ws.id)

    everything = await engine.store.list_workspace_events(ws.id)
    assert {e.job_id for e in everything} == {first.id, second.id}  # never another workspace's
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    mine = await engine.store.list_events(first.id) + await engine.store.list_events(second.id)
    assert sorted(e.id for e in everything) == sorted(e.id for e in mine)

    # after_id resumes by global id
    cut = everything[5].id
    assert await engine.store.list_workspace_events(ws.id, after_id=cut) == everything[6:]
    assert (
        await engine.store.list_workspace_events(ws.id, after_id=cut, limit=3) == (everything[6:9])
    )

    # types and job_id narrow it down, together with after_id
    outputs = await engine.store.list_workspace_events(ws.id, types=("step.output",))
    assert [(e.job_id, e.payload["chunk"]) for e in outputs] == [
        (first.id, "one\n"),
        (first.id, "two\n"),
        (second.id, "one\n"),
        (second.id, "two\n"),
    ]
    of_second = await engine.store.list_workspace_events(
        ws.id, job_id=second.id, types=("job.*",), after_id=cut
    )
    assert [(e.job_id, e.type) for e in of_second] == [
        (second.id, "job.created"),
        (second.id, "job.queued"),
        (second.id, "job.started"),
        (second.id, "job.completed"),
    ]
    assert await engine.store.list_workspace_events(ws.id, job_id=foreign.id) == []
