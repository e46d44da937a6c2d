"""Glob syntax for claims: brace expansion, segment tokens and symbolic character sets.

A character set is a tuple of sorted, disjoint code-point intervals, so a class such as
``[!a]`` stands for all of Unicode but ``a`` and ``/`` without enumerating it. Also here: the
four-state automaton of valid paths (non-empty segments, never ``.`` or ``..``) as steps per
character set. ``automata`` compiles segment tokens into NFAs.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

MAX_CODE_POINT = 0x10FFFF
MAX_ALTERNATIVES = 256

GLOB_CHARS = frozenset("*?[]{}")
WILDCARD_CHARS = frozenset("*?[")

CharSet = tuple[tuple[int, int], ...]
"""Sorted, disjoint, non-adjacent closed intervals of code points."""

SLASH_CODE = ord("/")
DOT_CODE = ord(".")
ANY: CharSet = ((0, MAX_CODE_POINT),)
NON_SLASH: CharSet = ((0, SLASH_CODE - 1), (SLASH_CODE + 1, MAX_CODE_POINT))
SLASH: CharSet = ((SLASH_CODE, SLASH_CODE),)


class GlobError(ValueError):
    """A pattern that is malformed or too complex; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def union(intervals: Iterable[tuple[int, int]]) -> CharSet:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)


@lru_cache(maxsize=65536)
def intersect(a: CharSet, b: CharSet) -> CharSet:
    """The characters in both ``a`` and ``b``."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def contains(charset: CharSet, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in charset)


def expand_braces(pattern: str) -> list[str]:
    """Every brace-free pattern ``pattern`` stands for (nested braces allowed), de-duplicated.

    Inside ``[...]`` braces and commas are literal. Raises ``GlobError`` on an unbalanced ``{``,
    ``}``, ``[`` or ``]``, or past ``MAX_ALTERNATIVES``.
    """
    alternatives, _ = _expand_sequence(pattern, 0, nested=False)
    return list(dict.fromkeys(alternatives))


def _expand_sequence(pattern: str, pos: int, *, nested: bool) -> tuple[list[str], int]:
    results = [""]
    while pos < len(pattern):
        char = pattern[pos]
        if char == "{":
            options: list[str] = []
            pos += 1
            while True:
                option, pos = _expand_sequence(pattern, pos, nested=True)
                options.extend(option)
                if pos >= len(pattern):
                    raise GlobError("unbalanced '{'")
                pos += 1
                if pattern[pos - 1] == "}":
                    break
            if len(results) * len(options) > MAX_ALTERNATIVES:
                raise GlobError(f"more than {MAX_ALTERNATIVES} alternatives")
            results = [r + o for r in results for o in options]
            continue
        if char == "}" or (char == "," and nested):
            if not nested:
                raise GlobError("unbalanced '}'")
            return results, pos
        if char == "[":
            end = _class_end(pattern, pos)
            text = pattern[pos : end + 1]
            pos = end + 1
        elif char == "]":
            raise GlobError("unbalanced ']'")
        else:
            text = char
            pos += 1
        results = [r + text for r in results]
    return results, pos


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``; a leading ``]`` is literal."""
    pos = start + 1
    if pos < len(pattern) and pattern[pos] == "!":
        pos += 1
    if pos < len(pattern) and pattern[pos] == "]":
        pos += 1
    while pos < len(pattern) and pattern[pos] not in "]/":
        pos += 1
    if pos >= len(pattern) or pattern[pos] == "/":
        raise GlobError("unbalanced '[' (a class ends with ']' in its own segment)")
    return pos


Token = CharSet | None
"""One segment element: a set of characters to match once, or ``None`` for ``*``."""


@lru_cache(maxsize=4096)
def parse_segment(segment: str) -> tuple[Token, ...]:
    """Tokens of a brace-free segment; ``**`` inside a segment acts as ``*``."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(segment):
        char = segment[pos]
        if char == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
            pos += 1
        elif char == "?":
            tokens.append(NON_SLASH)
            pos += 1
        elif char == "[":
            end = _class_end(segment, pos)
            tokens.append(_parse_class(segment[pos + 1 : end]))
            pos = end + 1
        else:
            tokens.append(((ord(char), ord(char)),))
            pos += 1
    return tuple(tokens)


def _parse_class(body: str) -> CharSet:
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    intervals: list[tuple[int, int]] = []
    pos = 0
    while pos < len(body):
        if pos + 2 < len(body) and body[pos + 1] == "-":
            lo, hi = ord(body[pos]), ord(body[pos + 2])
            if lo > hi:
                raise GlobError(f"reversed range '{body[pos : pos + 3]}'")
            intervals.append((lo, hi))
            pos += 3
        else:
            intervals.append((ord(body[pos]), ord(body[pos])))
            pos += 1
    chosen = union(intervals)
    if negated:
        edges = [-1] + [p for iv in chosen for p in iv] + [MAX_CODE_POINT + 1]
        chosen = tuple(
            (edges[i] + 1, edges[i + 1] - 1)
            for i in range(0, len(edges), 2)
            if edges[i] + 1 <= edges[i + 1] - 1
        )
    return intersect(chosen, NON_SLASH)


def literal_suffix(segment: str) -> str:
    """The characters a brace-free segment must end with (after its last wildcard)."""
    tail: list[str] = []
    for token in reversed(parse_segment(segment)):
        if token is None or len(token) != 1 or token[0][0] != token[0][1]:
            break
        tail.append(chr(token[0][0]))
    return "".join(reversed(tail))


_OTHER: CharSet = ((0, DOT_CODE - 1), (SLASH_CODE + 1, MAX_CODE_POINT))  # neither "." nor "/"

# The valid-path automaton: at a segment start, after ".", after "..", inside a valid segment.
V_START, _V_DOT, _V_DOTDOT, V_OK = range(4)
_V_AFTER_DOT = (_V_DOT, _V_DOTDOT, V_OK, V_OK)


@lru_cache(maxsize=65536)
def valid_path_steps(charset: CharSet) -> tuple[tuple[int, ...], ...]:
    """Next valid-path states from each state on some character of ``charset``."""
    has_slash, has_dot = contains(charset, SLASH_CODE), contains(charset, DOT_CODE)
    has_other = bool(intersect(charset, _OTHER))
    steps: list[tuple[int, ...]] = []
    for state in range(4):
        nxt: set[int] = set()
        if has_slash and state == V_OK:
            nxt.add(V_START)
        if has_dot:
            nxt.add(_V_AFTER_DOT[state])
        if has_other:
            nxt.add(V_OK)
        steps.append(tuple(sorted(nxt)))
    return tuple(steps)


@lru_cache(maxsize=65536)
def valid_path_masks(charset: CharSet) -> tuple[int, ...]:
    """``valid_path_steps`` as one bit mask of next states per state."""
    return tuple(sum(1 << nv for nv in nxt) for nxt in valid_path_steps(charset))


# Character sets get small ids when an NFA is built, so the product search looks up the
# valid-path steps of a pair of sets by one integer. The table only grows (by the distinct
# sets claims use); ids must outlive every NFA that holds them.
_charset_ids: dict[CharSet, int] = {}
_charsets: list[CharSet] = []
PAIR_STEPS: dict[int, tuple[tuple[int, ...], ...]] = {}
_NO_STEPS: tuple[tuple[int, ...], ...] = ((), (), (), ())


def charset_id(charset: CharSet) -> int:
    found = _charset_ids.get(charset)
    if found is None:
        found = _charset_ids[charset] = len(_charsets)
        _charsets.append(charset)
    return found


def steps_for_pair(key: int) -> tuple[tuple[int, ...], ...]:
    """Valid-path steps on the characters two interned sets share (none if they share none)."""
    a, b = _charsets[key >> 32], _charsets[key & 0xFFFFFFFF]
    common = a if a == b else intersect(a, b)
    steps = valid_path_steps(common) if common else _NO_STEPS
    if len(PAIR_STEPS) >= 262144:
        PAIR_STEPS.clear()
    PAIR_STEPS[key] = steps
    return steps


def clear_caches() -> None:
    """Forget cached set operations and parsed segments (for cold benchmarks); set ids stay."""
    intersect.cache_clear()
    parse_segment.cache_clear()
    valid_path_steps.cache_clear()
    valid_path_masks.cache_clear()
    PAIR_STEPS.clear()
