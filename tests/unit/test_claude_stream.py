"""The Claude Code stream-json parser: what a transcript turns into, token counting, bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stitchwork.runner.claude_stream import (
    SUMMARY_STR_CHARS,
    ClaudeStreamParser,
    FinalResult,
    StreamItem,
    TextOutput,
    TokenUsage,
    ToolCall,
    summarize_input,
)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "claude_stream.jsonl"
TRANSCRIPT = FIXTURE.read_text(encoding="utf-8")
# The fixture's result line: input + cache creation + cache read, and output.
RESULT_INPUT = 6 + 5390 + 61559
RESULT_OUTPUT = 633


def _parse(text: str) -> tuple[ClaudeStreamParser, list[StreamItem]]:
    parser = ClaudeStreamParser()
    return parser, parser.feed(text) + parser.close()


def _text(items: list[StreamItem]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextOutput))


def _tokens(items: list[StreamItem]) -> tuple[int, int]:
    usage = [i for i in items if isinstance(i, TokenUsage)]
    return sum(u.tokens_input for u in usage), sum(u.tokens_output for u in usage)


def _line(**message: Any) -> str:
    return json.dumps(message) + "\n"


def _assistant(msg_id: str | None, usage: dict[str, int], *blocks: dict[str, Any]) -> str:
    body: dict[str, Any] = {"role": "assistant", "content": list(blocks), "usage": usage}
    if msg_id is not None:
        body["id"] = msg_id
    return _line(type="assistant", message=body)


# -- the fixture transcript --------------------------------------------------------------------


def test_fixture_tool_calls_come_out_in_order_with_ids_and_inputs() -> None:
    _, items = _parse(TRANSCRIPT)
    calls = [i for i in items if isinstance(i, ToolCall)]
    assert [c.name for c in calls] == ["Read", "Edit", "Bash"]
    assert [c.summary["id"] for c in calls] == [
        "toolu_01Fq6yR2mWcP8sKd4XbT7nLe",
        "toolu_01Hn3kV7pXe2QwL9dRt5ZyBm",
        "toolu_01Wd5tN8qGz3XhK6mPv2RcYs",
    ]
    assert calls[2].summary["input"] == {
        "command": "python -m pytest -q",
        "description": "Run the test suite",
    }
    assert calls[1].summary["input"]["new_string"] == "def add(a, b):\n    return a + b"


def test_fixture_tokens_count_each_message_once_and_match_the_result_totals() -> None:
    parser, items = _parse(TRANSCRIPT)
    # Four API messages; two of them span two lines each (text + tool_use), whose repeated
    # usage must not be counted twice, and whose output_tokens grew on the second line.
    expected_input = (3 + 4100 + 11900) + (1 + 620 + 16003) + (1 + 410 + 16623) + (1 + 260 + 17033)
    expected_output = 96 + 312 + 140 + 85
    assert (expected_input, expected_output) == (RESULT_INPUT, RESULT_OUTPUT)
    assert _tokens(items) == (expected_input, expected_output)
    assert (parser.tokens_input, parser.tokens_output) == (expected_input, expected_output)
    assert all(
        u.tokens_input >= 0 and u.tokens_output >= 0 for u in items if isinstance(u, TokenUsage)
    )


def test_fixture_readable_output_has_the_texts_tool_lines_and_result_status() -> None:
    parser, items = _parse(TRANSCRIPT)
    assert _text(items).splitlines() == [
        "I'll start by reading the calculator module the failing test exercises.",
        "→ Read /tmp/stitchwork/worktrees/job-7f3a/repo/src/calc.py",
        "→ Edit /tmp/stitchwork/worktrees/job-7f3a/repo/src/calc.py",
        "Now let me run the tests to confirm the fix.",
        "→ Bash python -m pytest -q",
        "Fixed `add` in `src/calc.py`: it subtracted instead of adding. All 3 tests pass.",
        # The result text repeats the last assistant text, so only its status line is added.
        "[result] success, 7 turns, $0.0481",
    ]
    # Tool results (file contents, test output) stay out of the readable output.
    assert "return a - b" not in _text(items)
    assert "3 passed" not in _text(items)
    assert parser.result == FinalResult(
        text="Fixed `add` in `src/calc.py`: it subtracted instead of adding. All 3 tests pass.",
        is_error=False,
        subtype="success",
        num_turns=7,
        total_cost_usd=0.0481335,
        session_id="5f1c2e0a-7b3d-4c8e-9a41-2d6f0b9e3c17",
    )
    assert (parser.session_id, parser.model) == (
        "5f1c2e0a-7b3d-4c8e-9a41-2d6f0b9e3c17",
        "claude-sonnet-4-5-20250929",
    )
    assert isinstance(items[-1], FinalResult)


@given(st.lists(st.integers(min_value=0, max_value=len(TRANSCRIPT)), max_size=30))
def test_fixture_split_into_chunks_anywhere_parses_the_same(cuts: list[int]) -> None:
    _, whole = _parse(TRANSCRIPT)
    bounds = [0, *sorted(cuts), len(TRANSCRIPT)]
    parser = ClaudeStreamParser()
    items: list[StreamItem] = []
    for start, end in itertools.pairwise(bounds):
        items += parser.feed(TRANSCRIPT[start:end])
    items += parser.close()
    assert items == whole


def test_partial_line_waits_for_its_newline() -> None:
    parser = ClaudeStreamParser()
    line = _assistant("m1", {"output_tokens": 3}, {"type": "text", "text": "hello"})
    assert parser.feed(line[:10]) == []
    assert parser.feed(line[10:-1]) == []  # everything but the newline
    assert parser.feed("\n") == [TextOutput("hello\n"), TokenUsage(0, 3)]


def test_last_line_without_newline_is_parsed_on_close() -> None:
    parser = ClaudeStreamParser()
    assert parser.feed('{"type":"result","subtype":"success","result":"done"}') == []
    items = parser.close()
    assert isinstance(items[-1], FinalResult)
    assert items[-1].text == "done"


# -- token counting rule -----------------------------------------------------------------------


def test_repeated_lines_of_one_message_count_its_highest_usage_once() -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 1}
    stream = (
        _assistant("m1", usage, {"type": "text", "text": "a"})
        + _assistant("m1", usage, {"type": "tool_use", "id": "t1", "name": "Read", "input": {}})
        + _assistant("m1", {**usage, "output_tokens": 40}, {"type": "text", "text": "b"})
        + _assistant("m2", {"input_tokens": 5, "output_tokens": 7}, {"type": "text", "text": "c"})
    )
    _, items = _parse(stream)
    assert [i for i in items if isinstance(i, TokenUsage)] == [
        TokenUsage(100, 1),
        TokenUsage(0, 39),
        TokenUsage(5, 7),
    ]


def test_lines_without_a_message_id_each_count() -> None:
    line = _assistant(None, {"input_tokens": 4, "output_tokens": 2}, {"type": "text", "text": "x"})
    _, items = _parse(line + line)
    assert _tokens(items) == (8, 4)


def test_result_usage_tops_the_totals_up_but_never_lowers_them() -> None:
    counted = _assistant("m1", {"input_tokens": 100, "output_tokens": 10})
    higher = _line(
        type="result", subtype="success", usage={"input_tokens": 150, "output_tokens": 12}
    )
    parser, items = _parse(counted + higher)
    assert [i for i in items if isinstance(i, TokenUsage)] == [
        TokenUsage(100, 10),
        TokenUsage(50, 2),
    ]
    assert (parser.tokens_input, parser.tokens_output) == (150, 12)

    lower = _line(type="result", subtype="success", usage={"input_tokens": 20, "output_tokens": 1})
    parser, items = _parse(counted + lower)
    assert _tokens(items) == (100, 10)


def test_result_alone_reports_its_usage() -> None:
    usage = {"input_tokens": 3, "cache_creation_input_tokens": 7, "output_tokens": 9}
    parser, items = _parse(_line(type="result", subtype="success", result="ok", usage=usage))
    assert _tokens(items) == (10, 9)
    assert (parser.tokens_input, parser.tokens_output) == (10, 9)


def test_error_result_is_an_error_and_its_text_is_shown() -> None:
    line = _line(
        type="result", subtype="error_max_turns", is_error=False, num_turns=30, result="gave up"
    )
    parser, items = _parse(line)
    assert parser.result is not None
    assert (parser.result.is_error, parser.result.subtype) == (True, "error_max_turns")
    assert _text(items) == "[result] error_max_turns, 30 turns\ngave up\n"


def test_api_error_reported_as_success_with_is_error_is_an_error() -> None:
    parser, items = _parse(_line(type="result", subtype="success", is_error=True, result="429"))
    assert parser.result is not None
    assert parser.result.is_error
    assert _text(items).startswith("[result] error\n")


# -- bad and unknown input ---------------------------------------------------------------------


def test_malformed_and_unknown_lines_pass_through_as_plain_output() -> None:
    lines = [
        "Error: something went wrong before JSON started",
        '{"type": "assistant", "message": ',  # cut-off JSON
        "[1, 2, 3]",
        '"just a string"',
        '{"type": "mystery", "x": 1}',
        '{"no_type": true}',
        '{"type": "assistant", "message": "not an object"}',
        "[" * 100_000,  # nested too deep for the JSON parser
    ]
    parser, items = _parse("\n".join(lines) + "\n")
    assert items == [TextOutput(line + "\n") for line in lines]
    assert (parser.tokens_input, parser.tokens_output, parser.result) == (0, 0, None)


def test_odd_shapes_inside_known_messages_are_tolerated() -> None:
    lines = [
        _line(type="assistant", message={"content": "plain string content"}),
        _line(type="assistant", message={"content": [1, None, {"type": "text", "text": 5}]}),
        _line(type="assistant", message={"content": [{"type": "tool_use"}]}),
        _line(
            type="assistant",
            message={"id": "m", "usage": {"input_tokens": "9", "output_tokens": -3}},
        ),
        _line(type="assistant", message={"content": [{"type": "thinking", "thinking": "hmm"}]}),
        _line(type="result", usage="none", num_turns=True, total_cost_usd="free"),
        _line(type="system", subtype="hook_response"),
        _line(type="user", message={"content": [{"type": "tool_result", "content": "secret"}]}),
        _line(type="stream_event", event={"type": "content_block_delta"}),
        "\r\n   \n",
    ]
    parser, items = _parse("".join(lines))
    assert [i for i in items if isinstance(i, ToolCall)] == [
        ToolCall("unknown", {"id": None, "input": None})
    ]
    assert _tokens(items) == (0, 0)
    assert _text(items) == "plain string content\n→ unknown\n[result] unknown\n"
    assert parser.result is not None
    assert (parser.result.is_error, parser.result.num_turns, parser.result.total_cost_usd) == (
        True,
        None,
        None,
    )


def test_a_line_over_the_limit_is_skipped_without_buffering_it(monkeypatch: Any) -> None:
    from stitchwork.runner import claude_stream

    monkeypatch.setattr(claude_stream, "MAX_LINE_CHARS", 100)
    parser = ClaudeStreamParser()
    items = parser.feed('{"type":"user","message":"' + "x" * 60)
    assert items == []
    items = parser.feed("x" * 60)
    assert items == [TextOutput("[stream-json line over 100 chars skipped]\n")]
    assert parser.feed("x" * 500) == []  # still the same line: dropped, not kept
    after = _assistant("m", {"output_tokens": 1}, {"type": "text", "text": "next"})
    assert parser.feed('"}\n' + after) == [TextOutput("next\n"), TokenUsage(0, 1)]


# -- tool input summaries ----------------------------------------------------------------------


def test_tool_input_summary_is_bounded() -> None:
    big = {
        "content": "y" * 10_000,
        "items": list(range(100)),
        "deep": {"a": {"b": {"c": {"d": 1}}}},
        **{f"k{i}": i for i in range(30)},
    }
    summary = summarize_input(big)
    assert summary["content"] == "y" * SUMMARY_STR_CHARS + "… (10000 chars)"
    assert summary["items"] == [*range(20), "… 80 more items"]
    assert summary["deep"] == {"a": {"b": "{… 1 keys}"}}
    assert len(summary) == 21  # 20 keys and a note about the rest
    assert summary["…"] == "13 more keys"
    assert len(json.dumps(summary)) < 2_000
