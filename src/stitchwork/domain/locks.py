"""Claim locks of one repository: who holds which claim in which mode, and who blocks whom.

``read`` and ``analysis`` share with each other; ``write`` excludes every other owner's
overlapping claim. An owner never conflicts with itself, so it may re-acquire a claim or upgrade
it to ``write`` (granted only when no other owner holds an overlapping claim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from stitchwork.domain.claims import ClaimIndex, normalize_claim


class LockMode(StrEnum):
    READ = "read"
    ANALYSIS = "analysis"
    WRITE = "write"


SHARED_LOCK_MODES = frozenset({LockMode.READ, LockMode.ANALYSIS})

# When one owner asks for a claim it already holds, it keeps the stronger mode. read and
# analysis block the same requests; analysis ranks higher only so the result is deterministic.
_RANK = {LockMode.READ: 0, LockMode.ANALYSIS: 1, LockMode.WRITE: 2}


def modes_conflict(a: LockMode, b: LockMode) -> bool:
    """Whether two different owners may not hold overlapping claims in these modes."""
    return LockMode.WRITE in (a, b)


@dataclass(frozen=True, slots=True)
class HeldLock:
    owner: str
    claim: str
    mode: LockMode


@dataclass(frozen=True, slots=True)
class LockConflict:
    """A requested claim blocked by another owner's overlapping held claim."""

    claim: str
    mode: LockMode
    held_claim: str
    held_mode: LockMode
    holder: str


class LockTable:
    """Pure in-memory claim locks for one repository, all-or-nothing per request."""

    def __init__(self, *, repo_root: Path | None = None) -> None:
        self._index: ClaimIndex[HeldLock] = ClaimIndex(repo_root=repo_root)
        self._owned: dict[str, dict[str, LockMode]] = {}  # owner -> normalised claim -> mode

    def conflicts(
        self, owner: str, claims: Sequence[tuple[str, LockMode]], *, first: bool = False
    ) -> list[LockConflict]:
        """Held claims of other owners that block ``claims``, sorted; ``[]`` means grantable.

        With ``first``, the search stops at the first conflict (a scheduler deciding whether
        a request is grantable needs no more). Raises ``InvalidClaim`` for a malformed claim.
        """
        found: set[LockConflict] = set()
        for claim, mode in _merge(claims).items():
            for held_claim, held in self._index.iter_overlapping(claim):
                if held.owner != owner and modes_conflict(mode, held.mode):
                    found.add(LockConflict(claim, mode, held_claim, held.mode, held.owner))
                    if first:
                        return list(found)
        return sorted(found, key=lambda c: (c.claim, c.holder, c.held_claim, c.mode, c.held_mode))

    def try_acquire(
        self, owner: str, claims: Sequence[tuple[str, LockMode]], *, first: bool = False
    ) -> list[LockConflict]:
        """Acquire every claim and return ``[]``, or acquire none and return the conflicts
        (only the first found, with ``first``).

        A claim the owner already holds keeps the stronger of the two modes.
        """
        wanted = _merge(claims)
        blocked = self.conflicts(owner, list(wanted.items()), first=first)
        if blocked:
            return blocked
        owned = self._owned.setdefault(owner, {})
        for claim, mode in wanted.items():
            current = owned.get(claim)
            if current is not None:
                if _RANK[current] >= _RANK[mode]:
                    continue
                self._index.discard(claim, HeldLock(owner, claim, current))
            owned[claim] = mode
            self._index.add(claim, HeldLock(owner, claim, mode))
        if not owned:
            del self._owned[owner]
        return []

    def release(self, owner: str) -> None:
        """Drop every claim ``owner`` holds."""
        for claim, mode in self._owned.pop(owner, {}).items():
            self._index.discard(claim, HeldLock(owner, claim, mode))

    def held(self, owner: str | None = None) -> list[HeldLock]:
        """Held locks, of one owner or of all, sorted by owner then claim."""
        owners = [owner] if owner is not None else list(self._owned)
        return sorted(
            (
                HeldLock(o, claim, mode)
                for o in owners
                for claim, mode in self._owned.get(o, {}).items()
            ),
            key=lambda h: (h.owner, h.claim),
        )

    def holders(self) -> set[str]:
        """Owners holding at least one claim."""
        return set(self._owned)


def _merge(claims: Sequence[tuple[str, LockMode]]) -> dict[str, LockMode]:
    """Normalised claims with the strongest mode asked for each (validates every claim first)."""
    merged: dict[str, LockMode] = {}
    for claim, mode in claims:
        text = normalize_claim(claim)
        mode = LockMode(mode)
        if text not in merged or _RANK[mode] > _RANK[merged[text]]:
            merged[text] = mode
    return merged
