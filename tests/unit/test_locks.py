"""Claim locks: shared read/analysis, exclusive write, all-or-nothing, per-owner upgrades."""

from __future__ import annotations

import pytest

from stitchwork.domain.locks import HeldLock, LockConflict, LockMode, LockTable, modes_conflict
from stitchwork.errors import InvalidClaim

READ, ANALYSIS, WRITE = LockMode.READ, LockMode.ANALYSIS, LockMode.WRITE


def test_lock_modes_have_lower_case_wire_values() -> None:
    assert [m.value for m in LockMode] == ["read", "analysis", "write"]


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        (READ, READ, False),
        (READ, ANALYSIS, False),
        (ANALYSIS, ANALYSIS, False),
        (READ, WRITE, True),
        (ANALYSIS, WRITE, True),
        (WRITE, WRITE, True),
    ],
)
def test_only_write_excludes(a: LockMode, b: LockMode, conflict: bool) -> None:
    assert modes_conflict(a, b) is conflict
    assert modes_conflict(b, a) is conflict


def test_read_and_analysis_share_an_overlapping_claim() -> None:
    table = LockTable()
    assert table.try_acquire("j1", [("src/**", READ)]) == []
    assert table.try_acquire("j2", [("src/a.ts", ANALYSIS)]) == []
    assert table.try_acquire("j3", [("src", READ)]) == []
    assert table.holders() == {"j1", "j2", "j3"}


def test_write_is_exclusive_against_every_mode() -> None:
    table = LockTable()
    table.try_acquire("reader", [("src/a.ts", READ)])
    assert table.try_acquire("writer", [("src/*.ts", WRITE)]) == [
        LockConflict("src/*.ts", WRITE, "src/a.ts", READ, "reader")
    ]
    table.release("reader")
    assert table.try_acquire("writer", [("src/*.ts", WRITE)]) == []
    assert table.conflicts("analyst", [("src/b.ts", ANALYSIS)]) == [
        LockConflict("src/b.ts", ANALYSIS, "src/*.ts", WRITE, "writer")
    ]


def test_a_directory_write_blocks_a_write_beneath_it() -> None:
    table = LockTable()
    assert table.try_acquire("j1", [("src/**", WRITE)]) == []
    assert table.try_acquire("j2", [("src/a.ts", WRITE)]) == [
        LockConflict("src/a.ts", WRITE, "src/**", WRITE, "j1")
    ]
    assert table.held("j2") == []


def test_disjoint_writes_run_side_by_side() -> None:
    table = LockTable()
    assert table.try_acquire("j1", [("src/mcp/tools/**", WRITE)]) == []
    assert table.try_acquire("j2", [("src/mcp/execution/m.ts", WRITE)]) == []
    assert table.try_acquire("j3", [("src/*.ts", WRITE), ("docs/*.md", WRITE)]) == []


def test_acquisition_is_all_or_nothing() -> None:
    table = LockTable()
    table.try_acquire("j1", [("docs/README.md", WRITE)])
    conflicts = table.try_acquire("j2", [("src/**", WRITE), ("docs/*.md", READ)])
    assert conflicts == [LockConflict("docs/*.md", READ, "docs/README.md", WRITE, "j1")]
    assert table.held("j2") == []
    assert "j2" not in table.holders()
    assert table.try_acquire("j3", [("src/a.ts", WRITE)]) == []  # src/** was not taken


def test_an_invalid_claim_acquires_nothing() -> None:
    table = LockTable()
    with pytest.raises(InvalidClaim):
        table.try_acquire("j1", [("src/**", WRITE), ("../escape", READ)])
    assert table.held() == []


def test_an_owner_never_conflicts_with_itself() -> None:
    table = LockTable()
    assert table.try_acquire("j1", [("src/**", WRITE)]) == []
    assert table.try_acquire("j1", [("src/a.ts", WRITE), ("./src/**", READ)]) == []
    assert table.conflicts("j1", [("src", WRITE)]) == []
    assert table.held("j1") == [
        HeldLock("j1", "src/**", WRITE),
        HeldLock("j1", "src/a.ts", WRITE),
    ]


def test_an_owner_alone_on_a_claim_may_upgrade_read_to_write() -> None:
    table = LockTable()
    table.try_acquire("j1", [("src", READ)])
    assert table.try_acquire("j1", [("src", WRITE)]) == []
    assert table.held("j1") == [HeldLock("j1", "src", WRITE)]
    assert table.try_acquire("j2", [("src/a.ts", READ)]) == [
        LockConflict("src/a.ts", READ, "src", WRITE, "j1")
    ]


def test_an_upgrade_is_refused_while_another_owner_shares_the_claim() -> None:
    table = LockTable()
    table.try_acquire("j1", [("src", READ)])
    table.try_acquire("j2", [("src/a.ts", ANALYSIS)])
    assert table.try_acquire("j1", [("src", WRITE)]) == [
        LockConflict("src", WRITE, "src/a.ts", ANALYSIS, "j2")
    ]
    assert table.held("j1") == [HeldLock("j1", "src", READ)]
    table.release("j2")
    assert table.try_acquire("j1", [("src", WRITE)]) == []


def test_re_acquiring_a_weaker_mode_keeps_the_stronger_one() -> None:
    table = LockTable()
    table.try_acquire("j1", [("src", WRITE), ("src", READ)])
    table.try_acquire("j1", [("src", ANALYSIS)])
    assert table.held() == [HeldLock("j1", "src", WRITE)]


def test_release_frees_every_claim_of_one_owner_only() -> None:
    table = LockTable()
    table.try_acquire("j1", [("src/**", WRITE), ("docs", WRITE)])
    table.try_acquire("j2", [("lib", WRITE)])
    table.release("j1")
    table.release("never-held")
    assert table.holders() == {"j2"}
    assert table.held() == [HeldLock("j2", "lib", WRITE)]
    assert table.try_acquire("j3", [("src/a.ts", WRITE), ("docs/x.md", WRITE)]) == []


def test_conflicts_lists_every_blocking_holder_in_a_stable_order() -> None:
    table = LockTable()
    table.try_acquire("j2", [("src/b.ts", READ)])
    table.try_acquire("j1", [("src/a.ts", READ), ("src/**", ANALYSIS)])
    assert table.conflicts("j3", [("src/*.ts", WRITE)]) == [
        LockConflict("src/*.ts", WRITE, "src/**", ANALYSIS, "j1"),
        LockConflict("src/*.ts", WRITE, "src/a.ts", READ, "j1"),
        LockConflict("src/*.ts", WRITE, "src/b.ts", READ, "j2"),
    ]
    assert table.conflicts("j3", [("src/*.ts", READ)]) == []


def test_first_stops_at_one_conflict_and_acquires_nothing() -> None:
    table = LockTable()
    table.try_acquire("j2", [("src/b.ts", READ)])
    table.try_acquire("j1", [("src/a.ts", READ), ("src/**", ANALYSIS)])
    everything = table.conflicts("j3", [("src/*.ts", WRITE)])
    first = table.try_acquire("j3", [("src/*.ts", WRITE)], first=True)
    assert len(first) == 1
    assert first[0] in everything
    assert "j3" not in table.holders()
    assert table.conflicts("j3", [("docs/", WRITE)], first=True) == []
