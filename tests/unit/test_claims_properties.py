"""Property tests: exact overlap agrees with brute force over a universe of paths.

The reference is independent of the automata: each claim becomes a Python regular expression
over lines ``/seg1/seg2/...`` (``**`` is "zero or more ``/segment``", a directory claim adds the
same suffix), and it is run over every path of the universe at once. Two claims of at most five
segments together overlap iff some path of at most five segments is covered by both (every
other segment is matched by "anything" on both sides and can be dropped), and ``SEGMENTS``
holds a witness for every pair of segment patterns that share a segment (checked below), so
brute force over ``SEGMENTS`` up to depth five is exact, not a sample.
"""

from __future__ import annotations

import itertools
import re
from fnmatch import fnmatchcase
from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st

from stitchwork.domain.claims import (
    ClaimIndex,
    clear_caches,
    covers,
    is_directory_claim,
    normalize_claim,
    overlaps,
)

SEGMENT_PATTERNS = [
    "a", "b", ".x", "a.ts", "b.md",
    "*", "?", "*.ts", "a*", ".*", "*a*", "a.*", "[ab]", "[!a]", "?.ts",
]  # fmt: skip
BRACES = {"{a,b.md}": ["a", "b.md"], "{*.ts,.x}": ["*.ts", ".x"], "{a,a*}": ["a", "a*"]}
SEGMENTS = ["a", "b", "c", ".x", ".a", "a.ts", "..ts", "b.md"]
MAX_DEPTH = 5

PATHS = [
    "/".join(p)
    for depth in range(1, MAX_DEPTH + 1)
    for p in itertools.product(SEGMENTS, repeat=depth)
]
SHALLOW_PATHS = [p for p in PATHS if p.count("/") < 3]
UNIVERSE = "\n".join("/" + p for p in PATHS)


def test_the_universe_has_a_witness_for_every_pair_of_segment_patterns() -> None:
    chars = "abc.tsxmd"
    candidates = ["".join(t) for n in range(1, 5) for t in itertools.product(chars, repeat=n)]
    candidates = [s for s in candidates if s not in (".", "..")]
    patterns = SEGMENT_PATTERNS + [alt for alts in BRACES.values() for alt in alts]
    for p, q in itertools.combinations_with_replacement(patterns, 2):
        if any(fnmatchcase(s, p) and fnmatchcase(s, q) for s in candidates):
            assert any(fnmatchcase(s, p) and fnmatchcase(s, q) for s in SEGMENTS), (p, q)


def _segment_regex(segment: str) -> str:
    out, pos = [], 0
    while pos < len(segment):
        char = segment[pos]
        if char == "*":
            out.append("[^/\n]*")
        elif char == "?":
            out.append("[^/\n]")
        elif char == "[":
            end = segment.index("]", pos + 2)
            body = segment[pos + 1 : end]
            negated = body.startswith("!")
            body = re.escape(body[1:] if negated else body)
            out.append(f"[^/\n{body}]" if negated else f"[{body}]")
            pos = end
        else:
            out.append(re.escape(char))
        pos += 1
    return "".join(out)


def _reference_regex(claim: str) -> str:
    """A regex for ``/``-prefixed lines of the paths a (normalised-form) claim covers."""
    if claim in ("", "."):
        return "[^\n]+"
    regexes = []
    anything = "(?:/[^/\n]+)*"
    for alt in _expand(claim):
        explicit = alt.endswith("/")
        segments = alt.rstrip("/").split("/")
        last = segments[-1]
        directory = (
            explicit or last == "**" or (not any(c in last for c in "*?[") and "." not in last[1:])
        )
        body = "".join(anything if s == "**" else "/" + _segment_regex(s) for s in segments)
        regexes.append(body + (anything if directory else ""))
    return "|".join(f"(?:{r})" for r in regexes)


def _expand(claim: str) -> list[str]:
    for brace, options in BRACES.items():
        if brace in claim:
            return [alt for o in options for alt in _expand(claim.replace(brace, o, 1))]
    return [claim]


@lru_cache(maxsize=4096)
def reference_covered(claim: str) -> frozenset[int]:
    """Start offsets, in ``UNIVERSE``, of the paths the claim covers."""
    pattern = re.compile(f"^(?:{_reference_regex(claim)})$", re.MULTILINE)
    return frozenset(m.start() for m in pattern.finditer(UNIVERSE))


def reference_covers(claim: str, path: str) -> bool:
    return re.fullmatch(_reference_regex(claim), "/" + path) is not None


@st.composite
def claims(draw: st.DrawFn, max_segments: int = 3) -> str:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from(["", ".", "./"]))
    count = draw(st.integers(1, max_segments))
    choices = [*SEGMENT_PATTERNS, "**", *BRACES]
    segments = [draw(st.sampled_from(choices)) for _ in range(count)]
    if all(s == "**" for s in segments):
        segments.append("a")
    claim = "/".join(segments)
    if draw(st.booleans()) and segments[-1] != "**":
        claim += draw(st.sampled_from(["/", "/**"]))
    return ("./" if draw(st.booleans()) else "") + claim


def _without_dot_slash(claim: str) -> str:
    return claim.removeprefix("./")


@st.composite
def claim_pairs(draw: st.DrawFn) -> tuple[str, str]:
    a = draw(claims())
    depth_a = max(1, len(a.strip("/").split("/")))
    return a, draw(claims(max_segments=max(1, MAX_DEPTH - depth_a)))


@settings(max_examples=400, deadline=None)
@given(claim_pairs())
def test_overlaps_agrees_with_brute_force_over_the_universe(pair: tuple[str, str]) -> None:
    a, b = pair
    expected = bool(
        reference_covered(_without_dot_slash(a)) & reference_covered(_without_dot_slash(b))
    )
    assert overlaps(a, b) is expected


@settings(max_examples=300, deadline=None)
@given(claims(), claims())
def test_overlaps_is_symmetric(a: str, b: str) -> None:
    assert overlaps(a, b) is overlaps(b, a)


@settings(max_examples=300, deadline=None)
@given(claims())
def test_every_generated_claim_overlaps_itself(claim: str) -> None:
    assert overlaps(claim, claim)


@settings(max_examples=150, deadline=None)
@given(claims())
def test_covers_agrees_with_the_reference_on_every_shallow_path(claim: str) -> None:
    ref = _without_dot_slash(claim)
    for path in SHALLOW_PATHS:
        assert covers(claim, path) is reference_covers(ref, path), path


@settings(max_examples=150, deadline=None)
@given(claims(), st.sampled_from(SHALLOW_PATHS))
def test_a_literal_file_path_overlaps_exactly_the_claims_covering_it(claim: str, path: str) -> None:
    if is_directory_claim(path):
        path = path + "/x.ts"  # turn it into a file claim that covers only itself
    assert overlaps(claim, path) is covers(claim, path)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(claims(max_segments=2), max_size=30),
    st.lists(claims(max_segments=2), min_size=1, max_size=5),
)
def test_claim_index_finds_exactly_the_overlapping_held_claims(
    held: list[str], queries: list[str]
) -> None:
    clear_caches()  # no decision cached by an earlier example can mask a wrong one here
    index: ClaimIndex[int] = ClaimIndex()
    for i, claim in enumerate(held):
        index.add(claim, i)
    assert len(index) == len(held)
    for query in queries:
        covered = reference_covered(_without_dot_slash(query))
        expected = [
            (normalize_claim(c), i)
            for i, c in enumerate(held)
            if covered & reference_covered(_without_dot_slash(c))
        ]
        assert sorted(index.overlapping(query)) == sorted(expected)
    for i, claim in enumerate(held):
        index.discard(claim, i)
    assert len(index) == 0
    assert index.overlapping(".") == []
