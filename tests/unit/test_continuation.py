"""Forced continuation prompts: every failure named with its output, wording by attempt."""

from __future__ import annotations

import pytest

from stitchwork.domain.continuation import (
    MAX_OUTPUT_CHARS,
    GateFailure,
    continuation_prompt,
    prior_work_prompt,
)

LINT = GateFailure("lint", "ruff found 2 problems", "a.py:1:1: F401 unused import\n", 1)
TESTS = GateFailure("tests", "1 test failed", "FAILED test_a.py::test_x\n", 1)


def test_every_failure_is_listed_with_its_output_and_the_task_follows() -> None:
    text = continuation_prompt("Add a greeting", [LINT, TESTS], attempt=2, max_attempts=3)
    assert "(lint, tests)" in text
    assert "### lint (exit code 1)\nruff found 2 problems\n```\na.py:1:1: F401" in text
    assert "### tests (exit code 1)\n1 test failed\n```\nFAILED test_a.py::test_x\n```" in text
    assert text.endswith("## The task\nAdd a greeting")


def test_the_wording_escalates_with_the_attempt() -> None:
    second = continuation_prompt("t", [LINT], attempt=2, max_attempts=4)
    third = continuation_prompt("t", [LINT], attempt=3, max_attempts=4)
    last = continuation_prompt("t", [LINT], attempt=4, max_attempts=4)
    assert second.startswith("Your changes did not pass")
    assert third.startswith("The mandatory gates failed again (attempt 3 of 4)")
    assert last.startswith("FINAL ATTEMPT (4 of 4)")
    assert len({second.split("\n")[0], third.split("\n")[0], last.split("\n")[0]}) == 3


def test_long_output_keeps_its_end_on_a_whole_line() -> None:
    output = "".join(f"line {i}\n" for i in range(5000)) + "FINAL VERDICT: 3 failed\n"
    text = continuation_prompt("t", [GateFailure("tests", "s", output)], attempt=2, max_attempts=2)
    block = text.split("```\n")[1]
    assert block.startswith("[... ")
    assert "earlier characters cut ...]\nline " in block
    assert "FINAL VERDICT: 3 failed" in block
    assert len(block) < MAX_OUTPUT_CHARS + 100


def test_a_failure_without_output_has_no_empty_block() -> None:
    text = continuation_prompt(
        "t", [GateFailure("claims", "changed docs/x.md")], attempt=2, max_attempts=3
    )
    assert "### claims\nchanged docs/x.md\n\n## The task" in text
    assert "```" not in text


@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 3), (4, 3), (0, 1)])
def test_attempts_outside_the_retries_are_refused(attempt: int, max_attempts: int) -> None:
    with pytest.raises(ValueError, match="attempt must be between 2"):
        continuation_prompt("t", [LINT], attempt=attempt, max_attempts=max_attempts)


def test_a_continuation_without_failures_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one failed gate"):
        continuation_prompt("t", [], attempt=2, max_attempts=3)


def test_prior_work_names_each_earlier_commit_and_every_failure() -> None:
    prompt = prior_work_prompt(
        "Add a search box",
        [("a" * 40, "wip: search box"), ("b" * 40, "wip: tests")],
        [GateFailure("tests", "1 failed", "FAILED test_search", 1)],
    )
    assert "2 commit(s)" in prompt
    assert f"- {'a' * 12} wip: search box" in prompt
    assert f"- {'b' * 12} wip: tests" in prompt
    assert "do not redo what it already does" in prompt
    assert "### tests (exit code 1)" in prompt
    assert "FAILED test_search" in prompt
    assert prompt.endswith("## The task\nAdd a search box")


def test_prior_work_needs_commits_and_failures() -> None:
    with pytest.raises(ValueError, match="at least one commit"):
        prior_work_prompt("task", [], [GateFailure("tests", "failed")])
    with pytest.raises(ValueError, match="at least one commit"):
        prior_work_prompt("task", [("a" * 40, "wip")], [])
