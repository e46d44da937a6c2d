"""Forced continuation: the prompt that sends an agent back to work after its gates failed.

Each retry names every failed gate with its output, and the wording escalates with the
attempt, so an agent that ignored a gentle request gets a firmer one and, on the last
attempt, is told so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_OUTPUT_CHARS = 4000  # per gate: the end of its output, where tools print their verdict


@dataclass(frozen=True, slots=True)
class GateFailure:
    """What a failed gate reports to the agent."""

    gate: str
    summary: str
    output: str = ""
    exit_code: int | None = None


def continuation_prompt(
    task_prompt: str, failures: Sequence[GateFailure], *, attempt: int, max_attempts: int
) -> str:
    """The prompt for ``attempt`` (2 or more) after ``failures`` on the previous one.

    Args:
        task_prompt: the task as first given to the agent.
        failures: every gate that failed on the previous attempt, in gate order.
        attempt: the attempt this prompt starts (the first retry is 2).
        max_attempts: the last attempt allowed.

    Raises:
        ValueError: for attempt 1 (the first attempt gets the task prompt itself), an attempt
            past ``max_attempts`` or no failures (nothing to continue for).
    """
    if attempt < 2 or attempt > max_attempts:
        raise ValueError(f"attempt must be between 2 and {max_attempts}, not {attempt}")
    if not failures:
        raise ValueError("a continuation needs at least one failed gate")
    names = ", ".join(f.gate for f in failures)
    if attempt == max_attempts:
        opening = (
            f"FINAL ATTEMPT ({attempt} of {max_attempts}). The mandatory gates still fail: "
            f"{names}. If they fail again the task fails and your changes are not merged. "
            "Fix exactly these failures; change nothing unrelated."
        )
    elif attempt == 2:
        opening = (
            f"Your changes did not pass the mandatory gates ({names}). Fix the failures "
            "below in the same working tree; your earlier changes are still there."
        )
    else:
        opening = (
            f"The mandatory gates failed again (attempt {attempt} of {max_attempts}): "
            f"{names}. Read each failure below carefully and fix its cause before you stop."
        )
    return "\n".join([opening, "", *_failures_and_task(failures, task_prompt)])


def _failures_and_task(failures: Sequence[GateFailure], task_prompt: str) -> list[str]:
    parts = ["## Failures"]
    for failure in failures:
        code = "" if failure.exit_code is None else f" (exit code {failure.exit_code})"
        parts += ["", f"### {failure.gate}{code}", failure.summary]
        if failure.output.strip():
            parts += ["```", _tail(failure.output).rstrip("\n"), "```"]
    return [*parts, "", "## The task", task_prompt]


def _tail(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    cut = text[-MAX_OUTPUT_CHARS:]
    newline = cut.find("\n")
    if 0 <= newline < 200:  # start on a whole line when one begins close by
        cut = cut[newline + 1 :]
    return f"[... {len(text) - len(cut):,} earlier characters cut ...]\n{cut}"


def prior_work_prompt(
    task_prompt: str, commits: Sequence[tuple[str, str]], failures: Sequence[GateFailure]
) -> str:
    """The prompt for an agent that resumes a task whose branch already holds commits from an
    earlier, interrupted run, on which the gates fail.

    Args:
        task_prompt: the task as first given to the agent.
        commits: (sha, subject) of the branch's commits, oldest first.
        failures: every gate that failed on them, in gate order.
    """
    if not commits or not failures:
        raise ValueError("prior work needs at least one commit and one failed gate")
    names = ", ".join(f.gate for f in failures)
    parts = [
        f"An earlier run of this task was interrupted. Its branch already holds "
        f"{len(commits)} commit(s), which are in your working tree:",
        "",
        *(f"- {sha[:12]} {subject}" for sha, subject in commits),
        "",
        f"The mandatory gates fail on that work ({names}). Build on it: do not redo what it "
        "already does, and fix the failures below.",
        "",
        *_failures_and_task(failures, task_prompt),
    ]
    return "\n".join(parts)
