"""The herald's wording, event by event (pure: events built here, no engine)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from stitchwork.domain.chat_status import (
    MAX_TEXT,
    JobView,
    Status,
    folded_text,
    output_text,
    render,
)
from stitchwork.domain.events import Event

JOB = UUID("01a1fef2-35af-7214-9214-bbafeb95f6a0")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LABEL = f"Job {JOB} for acme/app#42"
SHOUTING = re.compile(r"\b[A-Z]{4,}\b")


class Feed:
    """Events of one job, in seq order, each observed by the view and rendered."""

    def __init__(self) -> None:
        self.view = JobView(JOB, "agent-task", "acme/app#42")
        self.seq = 0

    def say(self, type_: str, after_s: float = 0.0, **payload: Any) -> Status | None:
        self.seq += 1
        event = Event(
            id=self.seq,
            job_id=JOB,
            seq=self.seq,
            type=type_,
            actor="worker",
            payload=payload,
            created_at=T0 + timedelta(seconds=after_s),
        )
        self.view.observe(event)
        return render(self.view, event)


def text(status: Status | None) -> str:
    assert status is not None
    return status.text


@pytest.mark.parametrize(
    ("after_s", "shown"),
    [(4.25, "4.2 s"), (42, "42 s"), (192, "3 min 12 s"), (3720, "1 h 2 min")],
)
def test_a_completed_job_says_how_long_it_took(after_s: float, shown: str) -> None:
    feed = Feed()
    assert feed.say("job.started", attempt=1) == Status(True, f"🔵 {LABEL} started.")
    done = feed.say("job.completed", after_s)
    assert done == Status(True, f"✅ {LABEL} completed in {shown}.", final=True)


def test_attempts_retries_requeues_and_progress_are_told_calmly() -> None:
    feed = Feed()
    assert text(feed.say("job.created", type="agent-task")) == (
        f"🟢 {LABEL} (agent-task) is queued."
    )
    assert feed.say("job.queued", attempt=1) is None  # created said it
    assert text(feed.say("job.progress", progress_percent=40)) == f"🔵 {LABEL} is 40% done."
    retried = feed.say("job.retried", reason="failed", error="exit 3", attempt=2)
    assert retried == Status(False, f"🔵 {LABEL} will try again as attempt 2: exit 3")
    assert text(feed.say("job.started", attempt=2)) == f"🔵 {LABEL} started, attempt 2."
    requeued = feed.say("job.requeued", reason="lease_expired")
    assert text(requeued) == f"⏸️ {LABEL} went back to the queue: its worker stopped responding."
    manual = feed.say("job.retried", reason="manual", attempt=3)
    assert manual == Status(True, f"🟢 {LABEL} is queued again, attempt 3.")
    cancelled = feed.say("job.cancelled", reason=None)
    assert cancelled == Status(True, f"⏸️ {LABEL} was cancelled.", final=True)


def test_steps_are_thread_lines_and_a_failed_step_quotes_its_output() -> None:
    feed = Feed()
    feed.say("job.started", attempt=1)
    assert feed.say("step.started", step_id="s1", name="agent", type="ai_action") == Status(
        False, "🔵 Step agent started."
    )
    assert feed.say("step.output", step_id="s1", chunk="thinking\n\nFAILED to parse\n") is None
    failed = text(feed.say("step.failed", step_id="s1", name="agent", error="exit 2"))
    assert failed == "⚠️ Step agent did not finish: exit 2\n```\nthinking\nFAILED to parse\n```"
    assert not SHOUTING.findall(failed.split("```")[0])  # shouting only in the quoted output
    skipped = feed.say("step.skipped", step_id="s2", name="merge", reason="nothing to merge")
    assert text(skipped) == "⏭️ Step merge was skipped: nothing to merge."
    attention = text(feed.say("job.failed", error="the agent did not finish"))
    assert attention.startswith(f"⚠️ {LABEL} needs attention: the agent did not finish\n")
    assert "What did not pass: the step agent: exit 2\n```\nthinking" in attention


def test_a_gate_is_told_by_its_own_events_and_its_failure_waits_for_its_output() -> None:
    feed = Feed()
    feed.say("job.started", attempt=1)
    assert feed.say("step.started", step_id="g", name="gate lint (attempt 1)", type="gate") is None
    started = feed.say("gate.started", step_id="g", gate="lint", attempt=1)
    assert text(started) == "🔵 Gate lint is running (attempt 1)."
    assert feed.say("gate.failed", step_id="g", gate="lint", summary="exited with code 1") is None
    feed.say("step.output", step_id="g", chunk="src/a.py:3: unused import\n")
    failed = feed.say("step.failed", step_id="g", name="gate lint (attempt 1)", error="x")
    assert text(failed) == (
        "⚠️ Gate lint did not pass: exited with code 1.\n```\nsrc/a.py:3: unused import\n```"
    )
    passed = Feed()
    passed.say("step.started", step_id="h", name="gate tests", type="gate")
    assert text(passed.say("gate.passed", step_id="h", gate="tests", summary="ok")) == (
        "✅ Gate tests passed: ok."
    )
    assert passed.say("step.completed", step_id="h", name="gate tests", duration_s=1) is None


def test_text_from_a_job_cannot_ping_or_break_out_of_its_quote() -> None:
    feed = Feed()
    feed.say("step.started", step_id="s", name="say @everyone", type="command")
    feed.say("step.output", step_id="s", chunk="```\n<@123> hi\n")
    failed = text(feed.say("step.failed", step_id="s", name="say @everyone", error="@here"))
    assert "@everyone" not in failed
    assert "@here" not in failed
    assert "<@123>" not in failed
    assert failed.count("```") == 2
    assert output_text("@channel ```x```\n") == "Live output:\n```\n@\u200bchannel '''x'''\n```"


def test_long_text_is_cut_to_what_a_platform_accepts() -> None:
    feed = Feed()
    feed.say("step.started", step_id="s", name="s" * 5000, type="command")
    status = feed.say("step.completed", step_id="s", name="s" * 5000, duration_s=1)
    assert len(text(status)) <= MAX_TEXT
    assert len(output_text("x" * 10_000)) < MAX_TEXT


def test_a_folded_status_says_how_many_updates_it_replaced() -> None:
    assert folded_text("✅ done", 0) == "✅ done"
    assert folded_text("✅ done", 1) == "✅ done\n(1 earlier update folded into this one)"
    assert folded_text("✅ done", 7) == "✅ done\n(7 earlier updates folded into this one)"
