"""The job state machine, checked on every ordered pair of statuses."""

from __future__ import annotations

import itertools
import uuid

import pytest

from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import (
    CANCELLABLE_JOB_STATUSES,
    JOB_TRANSITIONS,
    RETRYABLE_JOB_STATUSES,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    can_transition,
    check_retry,
    check_transition,
)
from stitchwork.errors import Conflict, InvalidTransition

P, Q, R = JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING
DONE, FAILED, CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

# Written out from ARCHITECTURE.md, independently of JOB_TRANSITIONS:
# pending -> queued -> running -> completed | failed; cancelled from pending/queued/running;
# retry from failed/cancelled -> queued; running -> queued is the re-queue of invariant 3
# (lease expired, automatic retry, graceful release).
LEGAL = {
    (P, Q),
    (P, CANCELLED),
    (Q, R),
    (Q, CANCELLED),
    (R, DONE),
    (R, FAILED),
    (R, CANCELLED),
    (R, Q),
    (FAILED, Q),
    (CANCELLED, Q),
}
ALL_PAIRS = list(itertools.product(JobStatus, repeat=2))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


def _ids(pair: tuple[JobStatus, JobStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_ids)
def test_legal_transition_is_allowed(pair: tuple[JobStatus, JobStatus]) -> None:
    from_, to = pair
    assert can_transition(from_, to)
    check_transition(uuid.uuid4(), from_, to)  # must not raise


@pytest.mark.parametrize("pair", ILLEGAL, ids=_ids)
def test_illegal_transition_raises_invalid_transition_with_fields(
    pair: tuple[JobStatus, JobStatus],
) -> None:
    from_, to = pair
    job_id = uuid.uuid4()
    assert not can_transition(from_, to)
    with pytest.raises(InvalidTransition) as info:
        check_transition(job_id, from_, to)
    err = info.value
    assert isinstance(err, Conflict)  # the API maps Conflict to 409
    assert (err.from_, err.to, err.entity_id) == (from_.value, to.value, job_id)
    assert err.fields == {
        "entity_id": str(job_id),
        "from_status": from_.value,
        "to_status": to.value,
    }
    assert err.message.startswith(f"cannot move {job_id} from {from_.value!r} to {to.value!r}: ")
    reason = err.message.split(": ", 1)[1]
    assert len(reason) > 10  # always says why, never just the two states
    assert str(err) == err.message


def test_transition_table_matches_the_architecture_exactly() -> None:
    table = {(f, t) for f, targets in JOB_TRANSITIONS.items() for t in targets}
    assert table == LEGAL
    assert set(JOB_TRANSITIONS) == set(JobStatus)


def test_cancelling_an_ended_job_says_it_already_ended() -> None:
    for ended in (DONE, FAILED, CANCELLED):
        with pytest.raises(InvalidTransition, match=rf"already ended \({ended.value}\)"):
            check_transition("j1", ended, CANCELLED)


def test_requeueing_a_queued_job_says_only_failed_or_cancelled_can_be_retried() -> None:
    with pytest.raises(InvalidTransition, match="only failed or cancelled jobs can be retried"):
        check_transition("j1", Q, Q)


def test_moving_a_completed_job_says_it_is_final() -> None:
    for to in (P, R, FAILED):
        with pytest.raises(InvalidTransition, match="a completed job is final"):
            check_transition("j1", DONE, to)


def test_other_illegal_moves_list_the_allowed_targets() -> None:
    with pytest.raises(InvalidTransition, match=r"from failed a job may move to queued$"):
        check_transition("j1", FAILED, R)
    with pytest.raises(InvalidTransition, match=r"may move to cancelled, queued$"):
        check_transition("j1", P, R)


@pytest.mark.parametrize("status", list(JobStatus), ids=str)
def test_manual_retry_is_allowed_only_from_failed_or_cancelled(status: JobStatus) -> None:
    if status in {FAILED, CANCELLED}:
        check_retry("j1", status)
        return
    with pytest.raises(InvalidTransition) as info:
        check_retry("j1", status)
    assert (info.value.from_, info.value.to) == (status.value, "queued")
    assert f"only failed or cancelled jobs can be retried; this one is {status.value}" in str(
        info.value
    )


def test_status_groups_agree_with_the_transition_table() -> None:
    assert {DONE, FAILED, CANCELLED} == TERMINAL_JOB_STATUSES
    assert {s for s in JobStatus if can_transition(s, CANCELLED)} == CANCELLABLE_JOB_STATUSES
    assert {s for s in TERMINAL_JOB_STATUSES if can_transition(s, Q)} == RETRYABLE_JOB_STATUSES
    # A terminal job only ever leaves its state by a retry.
    for status in TERMINAL_JOB_STATUSES:
        assert JOB_TRANSITIONS[status] <= {Q}


def test_job_statuses_are_lower_case_wire_values() -> None:
    assert [s.value for s in JobStatus] == [s.name.lower() for s in JobStatus]
    assert JobStatus("running") is R


# Copied from ARCHITECTURE.md, "Event types".
ARCHITECTURE_EVENT_TYPES = """
job.created job.queued job.started job.progress job.completed job.failed job.cancelled
job.retried job.requeued step.started step.progress step.output step.completed step.failed
step.skipped ai.tool_called ai.tokens_used ai.artifact_created gate.started gate.passed
gate.failed execution.planned execution.started execution.paused execution.resumed
execution.aborted execution.completed execution.failed execution.deadlock task.ready
task.started task.completed task.failed lock.contended
"""


# Nodes that end without running say so instead of posing as failures (docs/executions.md).
EXTENSION_EVENT_TYPES = {"task.skipped", "task.cancelled"}


def test_event_types_are_those_the_architecture_lists_plus_the_documented_node_endings() -> None:
    assert {e.value for e in EventType} == set(ARCHITECTURE_EVENT_TYPES.split()) | (
        EXTENSION_EVENT_TYPES
    )
