"""Parse Claude Code's ``--output-format stream-json`` output (one JSON object per line).

The parser is pure: text goes in, ``StreamItem``s come out. It never raises on what it reads —
a line that is not JSON, or JSON it does not know, comes back as plain text output.

What becomes what:

* ``assistant`` messages: each ``text`` block is output; each ``tool_use`` block is a
  ``ToolCall`` plus a one-line output naming the tool; ``thinking`` blocks are dropped.
* ``result`` (the last line of a run): a ``FinalResult``, a status line, and its text unless it
  only repeats the last assistant text.
* ``system`` (``init`` and others), ``user`` (tool results, which may be whole files) and
  ``stream_event`` (partial messages, repeated later as complete ``assistant`` messages) are
  recorded or dropped silently.

Token counting — exactly which numbers are summed, so that nothing is counted twice:

* Input tokens are ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``
  (everything the model read; with prompt caching ``input_tokens`` alone is a few tokens).
  Output tokens are ``output_tokens``.
* Usage is per API message, i.e. per ``assistant`` ``message.id``. Claude Code writes one
  ``assistant`` line per content block, and every line of a message repeats that message's usage
  (``output_tokens`` may grow on later lines). So for each ``message.id`` the highest input and
  output seen are counted, and a line contributes only its increase over them. A line without an
  id counts as a message of its own.
* The ``result`` line carries the run's cumulative usage. It only tops the counts up to its
  totals (when the assistant lines under-reported) and never lowers them: the increases already
  went out as events, which are append-only.

So the final totals are, per component, ``max(sum over message ids of the per-id maxima,
result.usage)``, and every ``TokenUsage`` item is an increase, never a running total.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

MAX_LINE_CHARS = 8_000_000
SUMMARY_STR_CHARS = 200
SUMMARY_ITEMS = 20
SUMMARY_DEPTH = 3
DETAIL_CHARS = 120
# Input keys that best say what a tool call does, in the order they are tried.
_DETAIL_KEYS = ("file_path", "path", "command", "pattern", "url", "query", "description")


@dataclass(frozen=True)
class TextOutput:
    """Human-readable text for the step's output."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A ``tool_use`` block: ``summary`` is ``{"id": ..., "input": <truncated input>}``."""

    name: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class TokenUsage:
    """Tokens used since the previous ``TokenUsage`` (an increase, never a running total)."""

    tokens_input: int
    tokens_output: int


@dataclass(frozen=True)
class FinalResult:
    """The ``result`` line that ends a run."""

    text: str
    is_error: bool
    subtype: str
    num_turns: int | None
    total_cost_usd: float | None
    session_id: str | None


StreamItem = TextOutput | ToolCall | TokenUsage | FinalResult


class ClaudeStreamParser:
    """Turns stream-json text, fed in chunks of any size, into ``StreamItem``s.

    Attributes:
        tokens_input: Input tokens counted so far (see the module docstring for the rule).
        tokens_output: Output tokens counted so far.
        result: The run's ``result`` line, once seen.
        session_id: From the ``system``/``init`` line, once seen.
        model: From the ``system``/``init`` line, once seen.
    """

    def __init__(self) -> None:
        self.tokens_input = 0
        self.tokens_output = 0
        self.result: FinalResult | None = None
        self.session_id: str | None = None
        self.model: str | None = None
        self._pending: list[str] = []
        self._pending_chars = 0
        self._skipping = False  # inside a line that grew past MAX_LINE_CHARS
        self._usage_by_message: dict[str, tuple[int, int]] = {}
        self._anonymous = itertools.count()
        self._last_text = ""

    def feed(self, chunk: str) -> list[StreamItem]:
        """Parse every line ``chunk`` completes; keep an unterminated rest for the next call."""
        items: list[StreamItem] = []
        *complete, rest = chunk.split("\n")
        for piece in complete:
            if self._skipping:
                self._skipping = False
                continue
            self._pending.append(piece)
            line = "".join(self._pending)
            self._pending, self._pending_chars = [], 0
            items.extend(self.parse_line(line))
        if rest and not self._skipping:
            self._pending.append(rest)
            self._pending_chars += len(rest)
            if self._pending_chars > MAX_LINE_CHARS:
                # Only a tool result gets this big; it is not shown anyway, and buffering it
                # whole could exhaust memory.
                self._pending, self._pending_chars, self._skipping = [], 0, True
                items.append(
                    TextOutput(f"[stream-json line over {MAX_LINE_CHARS} chars skipped]\n")
                )
        return items

    def close(self) -> list[StreamItem]:
        """Parse the last line when the output did not end with a newline."""
        line = "".join(self._pending)
        self._pending, self._pending_chars, self._skipping = [], 0, False
        return self.parse_line(line)

    def parse_line(self, line: str) -> list[StreamItem]:
        """Parse one complete line (without its newline)."""
        line = line.rstrip("\r")
        if not line.strip():
            return []
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            return [TextOutput(line + "\n")]
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "assistant" and isinstance(message.get("message"), dict):
            return self._assistant(message["message"])
        if kind == "result":
            return self._result(message)
        if kind == "system":
            if message.get("subtype") == "init":
                self.session_id = _str_or_none(message.get("session_id"))
                self.model = _str_or_none(message.get("model"))
            return []
        if kind in ("user", "stream_event"):
            return []
        return [TextOutput(line + "\n")]

    def _assistant(self, body: dict[str, Any]) -> list[StreamItem]:
        items: list[StreamItem] = []
        content = body.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks if isinstance(blocks, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                if block["text"].strip():
                    self._last_text = block["text"].strip()
                    items.append(TextOutput(block["text"].rstrip("\n") + "\n"))
            elif block.get("type") == "tool_use":
                name = str(block.get("name") or "unknown")
                tool_input = block.get("input")
                items.append(
                    ToolCall(name, {"id": block.get("id"), "input": summarize_input(tool_input)})
                )
                detail = _detail(tool_input)
                items.append(TextOutput(f"→ {name} {detail}\n" if detail else f"→ {name}\n"))
        usage = body.get("usage")
        if isinstance(usage, dict):
            message_id = body.get("id")
            key = message_id if isinstance(message_id, str) else f"#{next(self._anonymous)}"
            seen_in, seen_out = self._usage_by_message.get(key, (0, 0))
            used_in, used_out = _input_tokens(usage), _count(usage.get("output_tokens"))
            self._usage_by_message[key] = (max(seen_in, used_in), max(seen_out, used_out))
            items.extend(self._add_tokens(max(0, used_in - seen_in), max(0, used_out - seen_out)))
        return items

    def _result(self, message: dict[str, Any]) -> list[StreamItem]:
        text = message.get("result")
        text = text if isinstance(text, str) else ""
        cost = message.get("total_cost_usd")
        turns = message.get("num_turns")
        result = FinalResult(
            text=text,
            is_error=bool(message.get("is_error")) or message.get("subtype") != "success",
            subtype=str(message.get("subtype") or "unknown"),
            num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            total_cost_usd=float(cost) if isinstance(cost, int | float) else None,
            session_id=_str_or_none(message.get("session_id")) or self.session_id,
        )
        self.result = result
        items: list[StreamItem] = []
        usage = message.get("usage")
        if isinstance(usage, dict):
            items.extend(
                self._add_tokens(
                    max(0, _input_tokens(usage) - self.tokens_input),
                    max(0, _count(usage.get("output_tokens")) - self.tokens_output),
                )
            )
        items.append(TextOutput(_status_line(result)))
        if text.strip() and text.strip() != self._last_text:
            items.append(TextOutput(text.rstrip("\n") + "\n"))
        items.append(result)
        return items

    def _add_tokens(self, tokens_input: int, tokens_output: int) -> list[StreamItem]:
        if not tokens_input and not tokens_output:
            return []
        self.tokens_input += tokens_input
        self.tokens_output += tokens_output
        return [TokenUsage(tokens_input, tokens_output)]


def summarize_input(value: Any, depth: int = 0) -> Any:
    """A bounded copy of a tool's input: long strings cut, long lists and dicts shortened.

    A tool input may hold a whole file (``Write``'s ``content``); events only need enough to
    say what the call did.
    """
    if isinstance(value, str):
        if len(value) <= SUMMARY_STR_CHARS:
            return value
        return f"{value[:SUMMARY_STR_CHARS]}… ({len(value)} chars)"
    if isinstance(value, dict):
        if depth >= SUMMARY_DEPTH:
            return f"{{… {len(value)} keys}}"
        items = list(value.items())
        kept = {str(k): summarize_input(v, depth + 1) for k, v in items[:SUMMARY_ITEMS]}
        if len(items) > SUMMARY_ITEMS:
            kept["…"] = f"{len(items) - SUMMARY_ITEMS} more keys"
        return kept
    if isinstance(value, list | tuple):
        if depth >= SUMMARY_DEPTH:
            return f"[… {len(value)} items]"
        shown = [summarize_input(v, depth + 1) for v in value[:SUMMARY_ITEMS]]
        if len(value) > SUMMARY_ITEMS:
            shown.append(f"… {len(value) - SUMMARY_ITEMS} more items")
        return shown
    if value is None or isinstance(value, bool | int | float):
        return value
    return summarize_input(str(value), depth)


def _detail(tool_input: Any) -> str:
    if not isinstance(tool_input, dict):
        return ""
    for key in _DETAIL_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value.strip():
            first = value.strip().splitlines()[0]
            return first if len(first) <= DETAIL_CHARS else first[: DETAIL_CHARS - 1] + "…"
    return ""


def _status_line(result: FinalResult) -> str:
    # A failed API call can still come as subtype "success" with is_error set.
    parts = ["error" if result.is_error and result.subtype == "success" else result.subtype]
    if result.num_turns is not None:
        parts.append(f"{result.num_turns} turns")
    if result.total_cost_usd is not None:
        parts.append(f"${result.total_cost_usd:.4f}")
    return f"[result] {', '.join(parts)}\n"


def _input_tokens(usage: dict[str, Any]) -> int:
    return sum(
        _count(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _count(value: Any) -> int:
    """A token count, or 0 for anything that is not a non-negative integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
