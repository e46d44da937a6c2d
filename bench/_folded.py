"""Summarise a py-spy profile (``record --format raw --threads --idle``) as text tables."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

LINE_NUMBER = re.compile(r":\d+\)$")
THREAD = re.compile(r"^thread \(\d+\): (.*)$")  # py-spy --threads puts it first
MAIN_THREAD = "MainThread"
# Where an idle event loop waits; every other sample of the loop's thread is work.
LOOP_IDLE = frozenset({"EpollSelector.select (selectors.py)"})
# The entry point and the loop itself sit under every stack: left out of the inclusive tables.
ENTRY_FILES = ("(<frozen runpy>)", "(typer/", "(stitchwork/cli/", "(asyncio/runners.py)")
ENTRY_FUNCTIONS = (
    "BaseEventLoop.run_forever ",
    "BaseEventLoop.run_until_complete ",
    "BaseEventLoop._run_once ",
    "Handle._run ",
)


def _function(frame: str) -> str:
    """``name (path:line)`` -> ``name (path)``: one row per function, not per line."""
    return LINE_NUMBER.sub(")", frame.strip())


def summarize(path: str | Path, *, top: int = 25, focus: str = "stitchwork/") -> str:
    """How busy the event loop's thread was, and where its busy samples were: functions on
    the stack (inclusive; ``focus`` frames, then all) and at the top of the stack (self).

    Only the main thread (the event loop) is summarised: it is what every stream shares. Its
    samples include time spent waiting for the GIL, e.g. while aiosqlite's thread runs SQL.
    """
    samples: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        thread, *frames = stack.split(";")
        match = THREAD.match(thread)
        name = match.group(1) if match else thread
        if frames:
            samples[name][tuple(_function(f) for f in frames)] += int(count_text)
    loop = samples.get(MAIN_THREAD)
    if not loop:
        return "profile: no samples of the main thread"
    wall = sum(loop.values())
    busy = {stack: n for stack, n in loop.items() if stack[-1] not in LOOP_IDLE}
    busy_total = sum(busy.values()) or 1
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for stack, n in busy.items():
        leaf[stack[-1]] += n
        for frame in set(stack):
            if not frame.startswith(ENTRY_FUNCTIONS) and not any(e in frame for e in ENTRY_FILES):
                inclusive[frame] += n

    def table(title: str, counts: Counter[str], keep: str = "") -> list[str]:
        rows = [(n, f) for f, n in counts.most_common() if keep in f][:top]
        return [title] + [f"  {100 * n / busy_total:5.1f}%  {f}" for n, f in rows]

    lines = [f"event loop thread busy {100 * busy_total / wall:.0f}% of {wall} samples"]
    lines += table(f"event loop busy time, on the stack ({focus} frames):", inclusive, focus)
    lines += table("event loop busy time, on the stack (all frames):", inclusive)
    lines += table("event loop busy time, self:", leaf)
    return "\n".join(lines)
