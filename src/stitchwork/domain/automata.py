"""Claims as automata: compilation to NFAs, matching, and exact intersection.

A claim (its brace-free alternatives and whether each is a directory) compiles into an NFA
whose transitions carry symbolic character sets. Whether two claims share a path is decided
exactly by searching the product of their NFAs and a four-state automaton of valid paths
(non-empty segments, never ``.`` or ``..``). ``MAX_STATES`` bounds every search.

The caches here are process-wide and meant for one thread at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

from stitchwork.domain.globs import (
    ANY,
    NON_SLASH,
    PAIR_STEPS,
    SLASH,
    V_OK,
    V_START,
    WILDCARD_CHARS,
    CharSet,
    GlobError,
    charset_id,
    contains,
    literal_suffix,
    parse_segment,
    steps_for_pair,
    union,
    valid_path_masks,
)

MAX_STATES = 512
"""States one compiled claim may have; bounds every intersection to ``MAX_STATES**2 * 4``."""
_MAX_DFA_STATES = 4096  # subsets a lazy DFA remembers before it starts over


class Nfa:
    """An epsilon-free NFA; state 0 is the start. Matching memoises subset steps (a lazy DFA)."""

    __slots__ = (
        "_flags",
        "_ids",
        "_next",
        "_subsets",
        "_valid_live",
        "accept",
        "by_id",
        "live",
        "trans",
    )

    def __init__(
        self, trans: tuple[tuple[tuple[CharSet, int], ...], ...], accept: tuple[bool, ...]
    ) -> None:
        self.trans = trans
        self.accept = accept
        self.by_id = tuple(tuple((charset_id(cs), t) for cs, t in edges) for edges in trans)
        """``trans`` with interned character-set ids, for the product search."""
        sources: list[list[int]] = [[] for _ in trans]
        for q, edges in enumerate(trans):
            for _, target in edges:
                sources[target].append(q)
        live = [False] * len(trans)
        stack = [q for q, ok in enumerate(accept) if ok]
        while stack:
            q = stack.pop()
            if not live[q]:
                live[q] = True
                stack.extend(sources[q])
        self.live = tuple(live)
        """States from which some accepting state is reachable."""
        self._valid_live: tuple[int, ...] | None = None
        self._flags: dict[frozenset[int], int] = {}
        self._reset_dfa()

    def _reset_dfa(self) -> None:
        # A lazy DFA: subsets of states get ids (0 is the dead, empty subset) and each id a
        # dict of steps by character. Callers only ever see frozensets, so a reset is safe.
        self._subsets: list[frozenset[int]] = [frozenset()]
        self._ids: dict[frozenset[int], int] = {frozenset(): 0}
        self._next: list[dict[str, int]] = [{}]

    def _intern(self, states: frozenset[int]) -> int:
        if len(self._subsets) >= _MAX_DFA_STATES:
            self._reset_dfa()
        self._ids[states] = len(self._subsets)
        self._subsets.append(states)
        self._next.append({})
        return len(self._subsets) - 1

    def run(self, text: str, states: frozenset[int] = frozenset({0})) -> frozenset[int]:
        """States reached from ``states`` after reading ``text`` (empty when it died)."""
        current = self._ids.get(states)
        if current is None:
            current = self._intern(states)
        for char in text:
            nxt = self._next[current].get(char)
            if nxt is None:
                code = ord(char)
                trans = self.trans
                found = frozenset(
                    t for q in self._subsets[current] for cs, t in trans[q] if contains(cs, code)
                )
                nxt = self._ids.get(found)
                if nxt is None:
                    generation = self._next
                    nxt = self._intern(found)
                    if generation is not self._next:  # reset: the old id means nothing now
                        current = nxt
                        continue
                self._next[current][char] = nxt
            current = nxt
            if not current:
                break
        return self._subsets[current]

    def _flags_of(self, states: frozenset[int]) -> int:
        """Bits: 1 accepts, 2 alive, 4 accepts_below known, 8 accepts below."""
        flags = self._flags.get(states)
        if flags is None:
            if len(self._flags) >= 16384:
                self._flags.clear()
            flags = (1 if any(self.accept[q] for q in states) else 0) | (
                2 if any(self.live[q] for q in states) else 0
            )
            self._flags[states] = flags
        return flags

    def accepts(self, states: frozenset[int]) -> bool:
        return bool(self._flags_of(states) & 1)

    def alive(self, states: frozenset[int]) -> bool:
        """Whether some continuation might still be accepted (it ignores path validity)."""
        return bool(self._flags_of(states) & 2)

    def accepts_below(self, states: frozenset[int]) -> bool:
        """Whether, right after a ``/``, some non-empty valid rest of a path is accepted."""
        flags = self._flags_of(states)
        if not flags & 4:
            masks = self._valid_live
            if masks is None:
                masks = self._valid_live = self._compute_valid_live()
            below = any(masks[q] & (1 << V_START) for q in states)
            flags |= 4 | (8 if below else 0)
            self._flags[states] = flags
        return bool(flags & 8)

    def _compute_valid_live(self) -> tuple[int, ...]:
        """Per state, a bit mask of the valid-path states from which acceptance is reachable."""
        edges = [
            [(target, valid_path_masks(charset)) for charset, target in out] for out in self.trans
        ]
        masks = [1 << V_OK if ok else 0 for ok in self.accept]
        changed = True
        while changed:  # a fixpoint; reverse order settles acyclic parts in one sweep
            changed = False
            for q in range(len(edges) - 1, -1, -1):
                mask = masks[q]
                for target, step_masks in edges[q]:
                    reach = masks[target]
                    for v in range(4):
                        if step_masks[v] & reach:
                            mask |= 1 << v
                if mask != masks[q]:
                    masks[q] = mask
                    changed = True
        return tuple(masks)


class _Builder:
    """Thompson construction; each operation is memoised on its source state, so alternatives
    that share a prefix share its states (sound: a state stands for the ops that led to it)."""

    def __init__(self) -> None:
        self.edges: list[list[tuple[CharSet, int]]] = []
        self.eps: list[list[int]] = []
        self._done: dict[tuple[int, object], int] = {}

    def state(self) -> int:
        if len(self.edges) >= 4 * MAX_STATES:  # the epsilon-free NFA is checked exactly later
            raise GlobError(f"pattern needs more than {MAX_STATES} automaton states")
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def step(self, src: int, charset: CharSet) -> int:
        """``src`` then one character of ``charset``."""
        dst = self._done.get((src, charset))
        if dst is None:
            dst = self._done[(src, charset)] = self.state()
            self.edges[src].append((charset, dst))
        return dst

    def loop(self, src: int, charset: CharSet, *, shared: bool = True) -> int:
        """``src`` then ``charset*``."""
        dst = self._done.get((src, ("*", charset))) if shared else None
        if dst is None:
            dst = self.state()
            if shared:
                self._done[(src, ("*", charset))] = dst
            self.eps[src].append(dst)
            self.edges[dst].append((charset, dst))
        return dst

    def optional_dir_prefix(self, src: int) -> int:
        """``(.*/)?``: zero or more whole segments, each followed by ``/``."""
        dst = self._done.get((src, "**/"))
        if dst is None:
            dst = self._done[(src, "**/")] = self.state()
            self.eps[src].append(dst)
            anything = self.loop(src, ANY, shared=False)
            self.edges[anything].append((SLASH, dst))
        return dst

    def optional_beneath(self, src: int) -> int:
        """``(/.*)?``: nothing, or ``/`` and anything below."""
        dst = self._done.get((src, "/**"))
        if dst is None:
            dst = self._done[(src, "/**")] = self.state()
            self.eps[src].append(dst)
            below = self.state()
            self.edges[src].append((SLASH, below))
            anything = self.loop(below, ANY, shared=False)
            self.eps[anything].append(dst)
        return dst


def compile_nfa(alternatives: tuple[tuple[tuple[str, ...], bool], ...]) -> Nfa:
    """The union of ``(segments, directory)`` patterns; a directory also covers all beneath it.

    Each segment is a brace-free glob; ``**`` as a whole segment matches zero or more segments;
    no segments is the repo root (everything). Raises ``GlobError`` past ``MAX_STATES``.
    """
    b = _Builder()
    accepting: set[int] = set()
    for segments, directory in alternatives:
        cur = 0 if len(b.edges) else b.state()
        if not segments:
            cur = b.loop(cur, ANY)
        last = len(segments) - 1
        for i, segment in enumerate(segments):
            if segment == "**":
                if last == 0:
                    cur = b.loop(cur, ANY)
                elif i == last:
                    cur = b.optional_beneath(cur)
                else:
                    cur = b.optional_dir_prefix(b.step(cur, SLASH) if i > 0 else cur)
                continue
            if i > 0 and segments[i - 1] != "**":
                cur = b.step(cur, SLASH)
            for token in parse_segment(segment):
                cur = b.loop(cur, NON_SLASH) if token is None else b.step(cur, token)
        if directory and segments:
            cur = b.optional_beneath(cur)
        accepting.add(cur)
    return _remove_epsilons(b, accepting)


def _remove_epsilons(b: _Builder, accepting: set[int]) -> Nfa:
    """The equivalent epsilon-free NFA over the states reachable by characters from 0."""
    number = {0: 0}
    order = [0]
    trans: list[tuple[tuple[CharSet, int], ...]] = []
    accept: list[bool] = []
    while len(trans) < len(order):
        closure, stack = {order[len(trans)]}, [order[len(trans)]]
        while stack:
            for nxt in b.eps[stack.pop()]:
                if nxt not in closure:
                    closure.add(nxt)
                    stack.append(nxt)
        by_target: dict[int, list[CharSet]] = {}
        for q in closure:
            for charset, target in b.edges[q]:
                by_target.setdefault(target, []).append(charset)
        edges: list[tuple[CharSet, int]] = []
        for target, sets in by_target.items():
            if target not in number:
                number[target] = len(order)
                order.append(target)
            merged = sets[0] if len(sets) == 1 else union(iv for cs in sets for iv in cs)
            edges.append((merged, number[target]))
        trans.append(tuple(edges))
        accept.append(not accepting.isdisjoint(closure))
        if len(order) > MAX_STATES:
            raise GlobError(f"pattern needs more than {MAX_STATES} automaton states")
    return Nfa(tuple(trans), tuple(accept))


Resume = tuple[frozenset[int], frozenset[int]]
"""States of two NFAs after the same valid, non-empty path, where a search may start."""


def intersects(a: Nfa, b: Nfa, resume: Resume | None = None) -> bool:
    """Whether some valid repo path is accepted by both ``a`` and ``b``.

    Depth-first search of the product of ``a``, ``b`` and the valid-path automaton; the
    visited set is one byte per possible node ``(qa, qb, v)``. ``resume`` starts the search
    behind a path that every path ``b`` accepts starts with.
    """
    a_trans, b_trans, a_accept, b_accept = a.by_id, b.by_id, a.accept, b.accept
    pair_steps = PAIR_STEPS
    width = len(b_trans)
    seen = bytearray(len(a_trans) * width * 4)
    if resume is not None:
        stack = [(qa, qb, V_OK) for qa in resume[0] for qb in resume[1]]
        for qa, qb, v in stack:
            seen[((qa * width + qb) << 2) | v] = 1
    else:
        seen[V_START] = 1
        stack = [(0, 0, V_START)]
    while stack:
        qa, qb, v = stack.pop()
        if v == V_OK and a_accept[qa] and b_accept[qb]:
            return True
        b_edges = b_trans[qb]
        for id_a, ta in a_trans[qa]:
            row = id_a << 32
            base = ta * width
            for id_b, tb in b_edges:
                steps = pair_steps.get(row | id_b) or steps_for_pair(row | id_b)
                for nv in steps[v]:
                    node = ((base + tb) << 2) | nv
                    if not seen[node]:
                        seen[node] = 1
                        stack.append((ta, tb, nv))
    return False


Key = tuple[tuple[tuple[str, ...], bool], ...]
"""A claim to compile: its brace-free alternatives as ``(segments, directory)``."""


@dataclass(frozen=True, slots=True, eq=False)
class CompiledClaim:
    """A claim's NFA and what allows cheap exact decisions for it."""

    ident: int  # unique per compilation, so decisions are cached on a pair of small ints
    nfa: Nfa
    everything: bool  # the root claim
    # (path, directory) per alternative when none has a wildcard, but for a last "**" (which
    # makes a directory): overlaps with it are membership tests, not product searches
    literals: tuple[tuple[str, bool], ...] | None
    suffixes: frozenset[str] | None  # what every covered path ends with; None for directories


_idents = itertools.count()
_MAX_DECISIONS = 1 << 18
_decisions: dict[tuple[int, int], bool] = {}


@lru_cache(maxsize=32768)
def compile_claim(key: Key) -> CompiledClaim:
    """The compiled claim for ``key`` (cached); raises ``GlobError`` past ``MAX_STATES``."""
    literals: list[tuple[str, bool]] = []
    for segments, directory in key:
        if segments and segments[-1] == "**":
            segments, directory = segments[:-1], True
        if segments and all(WILDCARD_CHARS.isdisjoint(s) for s in segments):
            literals.append(("/".join(segments), directory))
    suffixes = None
    if not any(directory for _, directory in key):
        suffixes = frozenset(literal_suffix(segments[-1]) for segments, _ in key)
    return CompiledClaim(
        next(_idents),
        compile_nfa(key),
        everything=key == (((), True),),
        literals=tuple(literals) if len(literals) == len(key) else None,
        suffixes=suffixes,
    )


def _covers_literal(nfa: Nfa, path: str, directory: bool) -> bool:
    """Whether ``nfa`` accepts ``path`` or, for a directory, some valid path beneath it."""
    states = nfa.run(path)
    return nfa.accepts(states) or (directory and nfa.accepts_below(nfa.run("/", states)))


def decide(a: CompiledClaim, b: CompiledClaim, resume: Resume | None = None) -> bool:
    """Exact overlap of two compiled claims, cached per pair; ``resume`` as in ``intersects``."""
    pair = (a.ident, b.ident) if a.ident <= b.ident else (b.ident, a.ident)
    found = _decisions.get(pair)
    if found is None:
        if len(_decisions) >= _MAX_DECISIONS:
            _decisions.clear()
        found = _decisions[pair] = _decide_uncached(a, b, resume)
    return found


def _decide_uncached(a: CompiledClaim, b: CompiledClaim, resume: Resume | None) -> bool:
    """Trivial for the root, membership tests when one side is literal paths, otherwise a
    product search (after a cheap exact check of what file claims must end with)."""
    if a.everything or b.everything:
        return True  # every valid claim covers some path
    for side, other in ((a, b), (b, a)):
        if side.literals is not None:
            return any(_covers_literal(other.nfa, *literal) for literal in side.literals)
    if (
        a.suffixes is not None
        and b.suffixes is not None
        and not any(x.endswith(y) or y.endswith(x) for x in a.suffixes for y in b.suffixes)
    ):
        return False
    return intersects(a.nfa, b.nfa, resume)


def clear_caches() -> None:
    """Forget compiled claims and decisions (for cold benchmarks)."""
    compile_claim.cache_clear()
    _decisions.clear()


@lru_cache(maxsize=1)
def everything() -> Nfa:
    """Every valid path: intersecting with it tells whether a pattern matches any path at all."""
    return compile_nfa((((), True),))
