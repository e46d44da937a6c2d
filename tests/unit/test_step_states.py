"""The step state machine, checked on every ordered pair of statuses, and ``Step.duration_s``."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from stitchwork.domain.steps import (
    STEP_TRANSITIONS,
    TERMINAL_STEP_STATUSES,
    Step,
    StepPhase,
    StepStatus,
    StepType,
    check_step_transition,
    tail,
)
from stitchwork.errors import Conflict, InvalidTransition

P, R = StepStatus.PENDING, StepStatus.RUNNING
DONE, FAILED, SKIPPED = StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED

# Written out from ARCHITECTURE.md, independently of STEP_TRANSITIONS:
# pending -> running | skipped; running -> completed | failed | skipped; nothing from a
# terminal status.
LEGAL = {(P, R), (P, SKIPPED), (R, DONE), (R, FAILED), (R, SKIPPED)}
ALL_PAIRS = list(itertools.product(StepStatus, repeat=2))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ids(pair: tuple[StepStatus, StepStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_ids)
def test_legal_step_transition_is_allowed(pair: tuple[StepStatus, StepStatus]) -> None:
    from_, to = pair
    assert to in STEP_TRANSITIONS[from_]
    check_step_transition(uuid.uuid4(), from_, to)  # returns None: the move is allowed


@pytest.mark.parametrize("pair", ILLEGAL, ids=_ids)
def test_illegal_step_transition_raises_invalid_transition_with_fields(
    pair: tuple[StepStatus, StepStatus],
) -> None:
    from_, to = pair
    step_id = uuid.uuid4()
    assert to not in STEP_TRANSITIONS[from_]
    with pytest.raises(InvalidTransition) as info:
        check_step_transition(step_id, from_, to)
    error = info.value
    assert isinstance(error, Conflict)  # HTTP 409
    assert (error.entity_id, error.from_, error.to) == (step_id, from_.value, to.value)
    assert error.fields == {
        "entity_id": str(step_id),
        "from_status": from_.value,
        "to_status": to.value,
    }


def test_transition_table_covers_every_status_and_nothing_else() -> None:
    assert set(STEP_TRANSITIONS) == set(StepStatus)
    assert {(f, t) for f, tos in STEP_TRANSITIONS.items() for t in tos} == LEGAL


def test_terminal_statuses_are_exactly_those_without_a_way_out() -> None:
    assert {DONE, FAILED, SKIPPED} == TERMINAL_STEP_STATUSES
    assert {s for s in StepStatus if not STEP_TRANSITIONS[s]} == TERMINAL_STEP_STATUSES


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STEP_STATUSES))
def test_leaving_a_terminal_step_says_it_already_ended(terminal: StepStatus) -> None:
    with pytest.raises(InvalidTransition, match=f"already ended \\({terminal.value}\\)"):
        check_step_transition("s1", terminal, R)


def test_illegal_move_from_running_names_the_allowed_targets() -> None:
    with pytest.raises(InvalidTransition, match="may move to completed, failed, skipped"):
        check_step_transition("s1", R, P)


def test_wire_values_are_lower_case() -> None:
    assert [s.value for s in StepStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "skipped",
    ]
    assert [p.value for p in StepPhase] == ["setup", "execution", "validation", "cleanup"]
    assert [t.value for t in StepType] == ["command", "ai_action", "gate", "artifact"]


# -- duration ----------------------------------------------------------------------------------


def _step(**overrides: object) -> Step:
    step = Step(
        id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        ordinal=1,
        name="build",
        phase=StepPhase.EXECUTION,
        type=StepType.COMMAND,
        status=StepStatus.COMPLETED,
        attempt=1,
        output_tail=None,
        error=None,
        tokens_input=None,
        tokens_output=None,
        created_at=T0,
        started_at=T0,
        completed_at=T0 + timedelta(seconds=2, milliseconds=500),
    )
    return replace(step, **overrides)  # type: ignore[arg-type]


def test_duration_is_seconds_from_start_to_completion() -> None:
    assert _step().duration_s == 2.5


def test_duration_of_a_step_that_ended_at_once_is_zero() -> None:
    assert _step(completed_at=T0).duration_s == 0.0


def test_running_step_has_no_duration() -> None:
    assert _step(status=R, completed_at=None).duration_s is None


def test_step_skipped_before_it_started_has_no_duration() -> None:
    assert _step(status=SKIPPED, started_at=None).duration_s is None


def test_tail_keeps_the_last_characters() -> None:
    assert tail("abcdef", 3) == "def"
    assert tail("ab", 3) == "ab"
