"""What the herald says about a job in chat: one pure function from an event to a status line.

Calm and plain: an indicator, then what happened, never a shouted word. 🟢 created or queued
again, 🔵 started or running, ✅ completed or passed (with the time it took), ⚠️ needs
attention (with what did not pass and the last lines of its output), ⏸️ cancelled or back in
the queue. Text that comes from a job (errors, output, names) is quoted with its mentions
defused, so that a log line can never ping a channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from stitchwork.domain.events import Event

__all__ = ["MAX_TEXT", "JobView", "Status", "folded_text", "output_text", "render"]

MAX_TEXT = 1900  # Discord's limit is 2,000 characters
TAIL_CHARS = 2000  # output kept per step for the excerpt of a failure
TAILS_KEPT = 8  # steps whose output tail is kept
OUTPUT_CHARS = 1500  # live output shown per message (its tail)
EXCERPT_LINES = 6


@dataclass(frozen=True, slots=True)
class Status:
    """One thing to say: a ``milestone`` goes to the channel and the thread, anything else to
    the thread only; ``final`` marks the end of the job."""

    milestone: bool
    text: str
    final: bool = False


@dataclass(slots=True)
class JobView:
    """What the herald knows of one job: where it goes and what its events told so far."""

    id: UUID
    type: str
    issue_ref: str | None = None
    channel: str | None = None
    thread: str | None = None
    last_seq: int = 0
    started_at: datetime | None = None
    gates: dict[str, tuple[str, str]] = field(default_factory=dict)  # step id -> name, summary
    tails: dict[str, str] = field(default_factory=dict)  # step id -> output tail
    failure: tuple[str, str] | None = None  # what did not pass, its step id

    @property
    def label(self) -> str:
        # The whole id: ids are time-ordered (UUIDv7), so jobs created close together share
        # their first characters, and people copy the id into their next command.
        issue = f" for {_safe(self.issue_ref)}" if self.issue_ref else ""
        return f"Job {self.id}{issue}"

    def observe(self, event: Event) -> None:
        """Remember what later messages need: start time, gate steps, output, what failed."""
        p, kind = event.payload, event.type
        step_id = str(p.get("step_id", ""))
        if kind == "job.started":
            self.started_at, self.failure = event.created_at, None
            self.tails.clear()
        elif kind == "step.started" and p.get("type") == "gate":
            self.gates[step_id] = ("", "")
        elif kind in {"gate.started", "gate.passed", "gate.failed"}:
            self.gates[step_id] = (str(p.get("gate", "")), str(p.get("summary", "")))
            if kind == "gate.failed":
                self.failure = (f"the gate {p.get('gate')}: {p.get('summary')}", step_id)
        elif kind == "step.output":
            tail = self.tails.pop(step_id, "") + str(p.get("chunk", ""))
            self.tails[step_id] = tail[-TAIL_CHARS:]
            while len(self.tails) > TAILS_KEPT:
                del self.tails[next(iter(self.tails))]
        elif kind == "step.failed" and step_id not in self.gates:
            self.failure = (f"the step {p.get('name')}: {p.get('error')}", step_id)
        if kind in {"job.completed", "job.failed", "job.cancelled"}:
            self.gates.clear()


def render(job: JobView, event: Event) -> Status | None:
    """The status line for one event (after ``job.observe(event)``); None: nothing to say."""
    status = _job_status(job, event) or _step_status(job, event)
    if status is None or len(status.text) <= MAX_TEXT:
        return status
    return Status(status.milestone, status.text[: MAX_TEXT - 3] + "...", status.final)


def _job_status(job: JobView, event: Event) -> Status | None:
    p, kind, label = event.payload, event.type, job.label
    attempt = p.get("attempt")
    if kind == "job.created":
        return Status(True, f"🟢 {label} ({_safe(job.type)}) is queued.")
    if kind == "job.started":
        again = f", attempt {attempt}" if isinstance(attempt, int) and attempt > 1 else ""
        return Status(True, f"🔵 {label} started{again}.")
    if kind == "job.completed":
        took = ""
        if job.started_at is not None:
            took = f" in {_duration((event.created_at - job.started_at).total_seconds())}"
        return Status(True, f"✅ {label} completed{took}.", final=True)
    if kind == "job.failed":
        error = _quote(p.get("error") or "it did not complete")
        text = f"⚠️ {label} needs attention: {error}"
        if job.failure is not None:
            what, step_id = job.failure
            text += f"\nWhat did not pass: {_quote(what)}" + _excerpt(job, step_id)
        return Status(True, text, final=True)
    if kind == "job.cancelled":
        reason = f" ({_quote(p['reason'])})" if p.get("reason") else ""
        return Status(True, f"⏸️ {label} was cancelled{reason}.", final=True)
    if kind == "job.retried":
        if p.get("reason") == "manual":
            return Status(True, f"🟢 {label} is queued again, attempt {attempt}.")
        return Status(
            False, f"🔵 {label} will try again as attempt {attempt}: {_quote(p.get('error'))}"
        )
    if kind == "job.requeued":
        why = {"lease_expired": "its worker stopped responding", "shutdown": "its worker stopped"}
        reason = why.get(str(p.get("reason")), _quote(p.get("reason")))
        return Status(False, f"⏸️ {label} went back to the queue: {reason}.")
    if kind == "job.progress":
        return Status(False, f"🔵 {label} is {p.get('progress_percent')}% done.")
    return None


def _step_status(job: JobView, event: Event) -> Status | None:
    p, kind = event.payload, event.type
    step_id = str(p.get("step_id", ""))
    if step_id in job.gates:
        return _gate_status(job, kind, step_id, p)
    step = _quote(p.get("name"))
    if kind == "step.started":
        return Status(False, f"🔵 Step {step} started.")
    if kind == "step.completed":
        return Status(False, f"✅ Step {step} finished in {_duration(p.get('duration_s'))}.")
    if kind == "step.failed":
        text = f"⚠️ Step {step} did not finish: {_quote(p.get('error'))}"
        return Status(False, text + _excerpt(job, step_id))
    if kind == "step.skipped":
        return Status(False, f"⏭️ Step {step} was skipped: {_quote(p.get('reason'))}.")
    return None


def _gate_status(job: JobView, kind: str, step_id: str, p: dict[str, Any]) -> Status | None:
    """A gate is told by its own events, except its failure: that waits for the end of its
    step, when all of its output has arrived for the excerpt."""
    gate, summary = (_quote(part) for part in job.gates[step_id])
    if kind == "gate.started":
        return Status(False, f"🔵 Gate {gate} is running (attempt {p.get('attempt')}).")
    if kind == "gate.passed":
        return Status(False, f"✅ Gate {gate} passed: {summary}.")
    if kind == "step.failed":
        summary = summary or _quote(p.get("error"))
        text = f"⚠️ Gate {gate} did not pass: {summary}."
        return Status(False, text + _excerpt(job, step_id))
    return None


def output_text(output: str) -> str:
    """A message of live output (its tail)."""
    shown = _fence_safe(_safe(output[-OUTPUT_CHARS:])).rstrip("\n")
    return "Live output:\n```\n" + shown + "\n```"


def folded_text(text: str, folded: int) -> str:
    """A status line that replaced ``folded`` earlier ones (rate limited)."""
    if not folded:
        return text
    plural = "s" if folded > 1 else ""
    return f"{text}\n({folded} earlier update{plural} folded into this one)"


def _excerpt(job: JobView, step_id: str) -> str:
    """The last lines of a step's output, quoted."""
    tail = job.tails.get(step_id, "")
    lines = [line[:200] for line in tail.splitlines() if line.strip()][-EXCERPT_LINES:]
    if not lines:
        return ""
    return "\n```\n" + _fence_safe(_safe("\n".join(lines)))[-600:] + "\n```"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return "an unknown time"
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _quote(value: Any, limit: int = 300) -> str:
    """Text from a job on one line, at most ``limit`` characters, mentions defused."""
    flat = " ".join(str(value if value is not None else "").split())
    return _safe(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _safe(text: str) -> str:
    """Defuse mentions (@everyone, <@123>) in text that came from a job."""
    return text.replace("@", "@\u200b")


def _fence_safe(text: str) -> str:
    return text.replace("```", "'''")
