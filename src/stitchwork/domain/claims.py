"""Resource claims: normalisation, the directory rule, coverage, exact overlap, expansion, index.

A claim is a repo-relative path or glob (see "Claims" in docs/executions.md). Decisions are exact:
each normalised claim and its directory-ness compile once into an automaton (``automata``), and
two claims overlap iff the product of their automata accepts some valid path.

Canonical form (``normalize_claim``): no ``./``, ``//``, ``.`` or ``..``; the root is ``"."``;
a trailing ``/`` (or ``/.``, ``/..``) is kept as ``/`` since it makes a directory claim;
``**/**`` collapses to ``**``; a ``/`` after a last ``**`` is dropped. Limits: 1,024 characters
(``MAX_CLAIM_LENGTH``), 256 brace alternatives (``globs.MAX_ALTERNATIVES``) and 512 automaton
states (``automata.MAX_STATES``); longer claims are refused with ``InvalidClaim``, so every
overlap decision takes bounded time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

from stitchwork.domain import automata, globs, repo_tree
from stitchwork.domain.automata import CompiledClaim, Key, compile_claim, decide, intersects
from stitchwork.domain.globs import GLOB_CHARS, WILDCARD_CHARS, GlobError
from stitchwork.errors import InvalidClaim

MAX_CLAIM_LENGTH = 1024
ROOT = "."

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Alternative:
    segments: tuple[str, ...]  # brace-free; () is the root
    explicit_dir: bool  # the root, or written with a trailing "/" or "/**"
    literal: bool  # no wildcard in any segment, so the filesystem can decide
    rule_dir: bool  # directory by the naming rule alone


@dataclass(frozen=True, slots=True)
class _Claim:
    text: str
    alternatives: tuple[_Alternative, ...]
    prefix: tuple[str, ...]  # leading segments without glob characters


def normalize_claim(claim: str) -> str:
    """The canonical form of ``claim``; raises ``InvalidClaim`` (with a ``reason``) if unsafe.

    Surrounding whitespace is stripped; ``""``, ``"."`` and ``"./"`` are the root ``"."``.
    Brace alternatives are expanded to validate them but kept in the returned text.
    """
    if not isinstance(claim, str):
        raise InvalidClaim(repr(claim), "a claim is a string")
    text = _normalize_text(claim)
    try:
        _parse(text)
    except GlobError as exc:
        raise InvalidClaim(claim, exc.reason) from None
    return text


@lru_cache(maxsize=65536)
def _normalize_text(claim: str) -> str:
    if len(claim) > MAX_CLAIM_LENGTH:
        raise InvalidClaim(claim[:64] + "...", f"longer than {MAX_CLAIM_LENGTH} characters")
    text = claim.strip()
    if claim and not text:
        raise InvalidClaim(claim, "blank claim")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidClaim(claim, "control character")
    if "\\" in text:
        raise InvalidClaim(claim, "backslash (use '/' as separator; escapes are not supported)")
    if text.startswith("!"):
        raise InvalidClaim(claim, "negation is not supported")
    if text.startswith("/"):
        raise InvalidClaim(claim, "absolute path")
    segments: list[str] = []
    glob_seen = False
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if glob_seen:
                raise InvalidClaim(claim, "'..' after a wildcard or alternation")
            if not segments:
                raise InvalidClaim(claim, "escapes the repository")
            segments.pop()
            continue
        glob_seen = glob_seen or not GLOB_CHARS.isdisjoint(segment)
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    if not segments:
        return ROOT
    out = "/".join(segments)
    # "src/", "src/." and "src/x/.." all name a directory
    marked = text.rsplit("/", 1)[-1] in ("", ".", "..")
    return out + "/" if marked and segments[-1] != "**" else out


@lru_cache(maxsize=65536)
def _parse(text: str) -> _Claim:
    if text == ROOT:
        return _Claim(ROOT, (_Alternative((), True, True, True),), ())
    alternatives = tuple(_alternative(alt) for alt in globs.expand_braces(text))
    by_rule = compile_claim(tuple((a.segments, a.rule_dir) for a in alternatives)).nfa
    # A repository may turn literal alternatives into directories, each adding at most three
    # states; the claim is valid only if that variant fits too.
    if len(by_rule.trans) + 3 * len(alternatives) > automata.MAX_STATES:
        compile_claim(tuple((a.segments, True) for a in alternatives))
    # Without classes every segment can match a valid name; a class may allow only "." or "..".
    if "[" in text and not intersects(by_rule, automata.everything()):
        raise GlobError("matches no path")
    prefix: list[str] = []
    for segment in text.rstrip("/").split("/"):
        if not GLOB_CHARS.isdisjoint(segment):
            break
        prefix.append(segment)
    return _Claim(text, alternatives, tuple(prefix))


def _alternative(alt: str) -> _Alternative:
    explicit = alt.endswith("/")
    segments: list[str] = []
    for segment in (alt[:-1] if explicit else alt).split("/"):
        if segment in ("", ".", ".."):
            raise GlobError(f"alternative {alt!r} has an empty, '.' or '..' segment")
        if segment == "**" and segments and segments[-1] == "**":
            continue
        globs.parse_segment(segment)  # validates classes
        segments.append(segment)
    last = segments[-1]
    explicit = explicit or last == "**"
    wild_last = not WILDCARD_CHARS.isdisjoint(last)
    literal = all(WILDCARD_CHARS.isdisjoint(s) for s in segments)
    rule_dir = explicit or (not wild_last and "." not in last[1:])
    return _Alternative(tuple(segments), explicit, literal, rule_dir)


def _directory_flags(claim: _Claim, repo_root: Path | None) -> tuple[bool, ...]:
    flags: list[bool] = []
    for alt in claim.alternatives:
        if alt.explicit_dir or repo_root is None or not alt.literal:
            flags.append(alt.rule_dir)
            continue
        path = repo_root.joinpath(*alt.segments)
        flags.append(path.is_dir() or (alt.rule_dir and not os.path.lexists(path)))
    return tuple(flags)


def repo_root_of(repo: str | None) -> Path | None:
    """The tree that decides literal claims on ``repo``, or None (the naming rule decides).

    An execution's or hold's repository is either the absolute path of a checkout, whose tree
    then decides (``lib/v1.2`` existing as a directory is a directory claim), or a plain name
    with no tree behind it. A path that is not an existing directory is treated as a name.
    """
    if not repo or not os.path.isabs(repo):
        return None
    root = Path(repo)
    return root if root.is_dir() else None


def _key(claim: _Claim, repo_root: Path | None) -> Key:
    flags = _directory_flags(claim, repo_root)
    return tuple((a.segments, f) for a, f in zip(claim.alternatives, flags, strict=True))


def _compiled(claim: str, repo_root: Path | None) -> CompiledClaim:
    return compile_claim(_key(_parse(normalize_claim(claim)), repo_root))


def is_directory_claim(claim: str, *, repo_root: Path | None = None) -> bool:
    """Whether ``claim`` also covers everything beneath its matches.

    The root, a trailing ``/`` or ``/**``, or a last segment without wildcards and without a
    ``.`` after its first character. With ``repo_root``, an existing literal path decides by
    its type. Brace alternatives are judged one by one; any directory alternative makes this
    true.
    """
    return any(_directory_flags(_parse(normalize_claim(claim)), repo_root))


def is_ancestor(ancestor: str, descendant: str) -> bool:
    """Whether the literal leading segments of ``ancestor`` prefix those of ``descendant``.

    ``src`` is an ancestor of ``src/a.ts`` and ``src/**/*.ts`` but not of ``srcfoo``; the root
    is an ancestor of everything; every claim is its own ancestor.
    """
    a = _parse(normalize_claim(ancestor)).prefix
    return _parse(normalize_claim(descendant)).prefix[: len(a)] == a


def normalize_path(path: str) -> str:
    """A concrete repo path in canonical form (``"."`` for the root); glob characters are
    literal here. Raises ``InvalidClaim`` for absolute or escaping paths."""
    if path.startswith("/"):
        raise InvalidClaim(path, "absolute path")
    if "\0" in path:
        raise InvalidClaim(path, "control character")
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if not segments:
                raise InvalidClaim(path, "escapes the repository")
            segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return "/".join(segments) or ROOT


def covers(claim: str, path: str, *, repo_root: Path | None = None) -> bool:
    """Whether the concrete repo ``path`` is covered by ``claim``; agrees with ``overlaps``.

    The root path itself is covered only by the root claim.
    """
    text = normalize_claim(claim)
    target = normalize_path(path)
    if target == ROOT:
        return text == ROOT
    nfa = _compiled(text, repo_root).nfa
    return nfa.accepts(nfa.run(target))


def overlaps(a: str, b: str, *, repo_root: Path | None = None) -> bool:
    """Whether some path is covered by both claims, decided exactly by automaton intersection."""
    return decide(_compiled(a, repo_root), _compiled(b, repo_root))


def expand_claims(repo_root: Path, claims: Iterable[str]) -> list[str]:
    """Repo-relative files that exist now under ``repo_root`` and are covered by any claim.

    Dot-files are included, ``.git`` entries are skipped, symlinks are listed as files and not
    followed. Listings and matches are cached until a directory changes (``repo_tree``).
    """
    wanted = tuple(sorted({normalize_claim(c) for c in claims}))
    tree = repo_tree.listing(repo_root)
    found = tree.results.get(wanted)
    if found is None:
        found = _match_files(tree.files, wanted, Path(tree.root))
        tree.remember(wanted, found)
    return list(found)


def _match_files(files: tuple[str, ...], claims: tuple[str, ...], root: Path) -> tuple[str, ...]:
    nfas = [_compiled(c, root).nfa for c in claims]
    found: list[str] = []
    for nfa in nfas:
        dir_states: dict[str, frozenset[int]] = {}
        for path in files:
            directory, _, name = path.rpartition("/")
            states = dir_states.get(directory)
            if states is None:
                states = nfa.run(directory + "/") if directory else frozenset({0})
                dir_states[directory] = states
            if states and nfa.accepts(nfa.run(name, states)):
                found.append(path)
    return tuple(sorted(set(found)))


def clear_caches() -> None:
    """Forget every cached normalisation, automaton, decision and listing (for benchmarks)."""
    _normalize_text.cache_clear()
    _parse.cache_clear()
    automata.clear_caches()
    globs.clear_caches()
    repo_tree.clear()


class _Node(Generic[T]):
    __slots__ = ("children", "entries", "path")

    def __init__(self, path: str = "") -> None:
        self.path = path  # the literal prefix of every claim held here
        self.children: dict[str, _Node[T]] = {}
        # (claim, item, compiled, directory flag if the claim is exactly this node's path,
        # else None and the claim's automaton states after this node's path)
        self.entries: list[tuple[str, T, CompiledClaim, bool | None, frozenset[int]]] = []


class ClaimIndex(Generic[T]):
    """Held claims with an item each, in a trie of their literal leading segments.

    A lookup walks the trie with the query's automaton and runs the exact overlap check only
    on claims at nodes whose path the query can match or continue below: every candidate's
    literal prefix is an ancestor of the query's or lies beneath it. Claims are stored
    normalised; with ``repo_root``, a held claim's directory-ness is decided when it is added.
    """

    def __init__(self, *, repo_root: Path | None = None) -> None:
        self._root: _Node[T] = _Node()
        self._size = 0
        self._repo_root = repo_root

    def __len__(self) -> int:
        return self._size

    def add(self, claim: str, item: T) -> None:
        """Hold ``claim`` for ``item``; adding the same pair again changes nothing."""
        text = normalize_claim(claim)
        parsed = _parse(text)
        node = self._root
        for segment in parsed.prefix:
            child = node.children.get(segment)
            if child is None:
                path = f"{node.path}/{segment}" if node.path else segment
                child = node.children[segment] = _Node(path)
            node = child
        if any(entry[0] == text and entry[1] == item for entry in node.entries):
            return
        compiled = compile_claim(_key(parsed, self._repo_root))
        direct = None
        if compiled.literals is not None and len(compiled.literals) == 1:
            path, directory = compiled.literals[0]
            direct = directory if path == "/".join(parsed.prefix) else None
        # Only a claim that is not exactly this node's path is decided from these states; a
        # plain file or directory claim (most of them) skips the automaton run.
        after = (
            frozenset()
            if direct is not None
            else compiled.nfa.run(node.path)
            if node.path
            else frozenset({0})
        )
        node.entries.append((text, item, compiled, direct, after))
        self._size += 1

    def discard(self, claim: str, item: T) -> None:
        """Stop holding ``claim`` for ``item`` if it is held."""
        text = normalize_claim(claim)
        prefix = _parse(text).prefix
        path = [self._root]
        for segment in prefix:
            child = path[-1].children.get(segment)
            if child is None:
                return
            path.append(child)
        entries = path[-1].entries
        for i, entry in enumerate(entries):
            if entry[0] == text and entry[1] == item:
                del entries[i]
                self._size -= 1
                break
        for depth in range(len(prefix), 0, -1):  # prune nodes left empty
            if path[depth].entries or path[depth].children:
                break
            del path[depth - 1].children[prefix[depth - 1]]

    def overlapping(self, claim: str) -> list[tuple[str, T]]:
        """Held ``(claim, item)`` pairs whose claim overlaps ``claim``."""
        return list(self.iter_overlapping(claim))

    def iter_overlapping(self, claim: str) -> Iterator[tuple[str, T]]:
        """``overlapping`` one pair at a time, so a caller that needs only the first stops
        the walk early."""
        text = normalize_claim(claim)
        prefix = _parse(text).prefix
        query = compile_claim(_key(_parse(text), self._repo_root))
        nfa = query.nfa
        for held_text, item, held, _, _ in self._root.entries:
            if decide(query, held):
                yield held_text, item
        stack = [(self._root, frozenset({0}), 0)]
        # Names recur across the tree (and "**" brings the query back to the same states), so
        # the walk's automaton steps are remembered per (states, name) for this lookup.
        steps: dict[tuple[frozenset[int], str], tuple[frozenset[int], frozenset[int], bool]] = {}
        while stack:
            node, start, depth = stack.pop()
            # Within the query's literal prefix only the same name can match; below it, the
            # query's automaton picks the children.
            if depth < len(prefix):
                child = node.children.get(prefix[depth])
                children = [(prefix[depth], child)] if child is not None else []
            else:
                children = list(node.children.items())
            for segment, child in children:
                seen = steps.get((start, segment))
                if seen is None:
                    inside = nfa.run(segment, start)
                    below = nfa.run("/", inside)
                    seen = steps[(start, segment)] = (inside, below, nfa.alive(below))
                inside, below, deeper = seen
                if not inside:
                    continue
                if child.entries and (deeper or nfa.accepts(inside)):
                    for held_text, item, held, direct, after in child.entries:
                        # A claim that is exactly this node's path is decided by the states
                        # the walk already holds: the query covers it, or (for a directory)
                        # something beneath it.
                        if (
                            decide(query, held, (inside, after))
                            if direct is None
                            else nfa.accepts(inside) or (direct and nfa.accepts_below(below))
                        ):
                            yield held_text, item
                if deeper and child.children:
                    stack.append((child, below, depth + 1))
