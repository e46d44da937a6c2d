"""Claims: normalisation, directory rule, ancestry, coverage, exact overlap, expansion, index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stitchwork.domain import automata
from stitchwork.domain import claims as claims_module
from stitchwork.domain.automata import CompiledClaim, Resume
from stitchwork.domain.claims import (
    ClaimIndex,
    covers,
    expand_claims,
    is_ancestor,
    is_directory_claim,
    normalize_claim,
    normalize_path,
    overlaps,
)
from stitchwork.errors import InvalidClaim

OVERLAPPING = [
    ("src/**", "src/api/x.ts"),
    ("src", "src/api"),
    ("./src/a.ts", "src/a.ts"),
    ("src/api", "src/a*/x.ts"),
    ("docs/*.md", "docs/README.md"),
    (".", "anything/at/all.txt"),
    ("", "src/*.ts"),
    ("src/**", "src"),
    ("**", ".github/workflows/ci.yml"),
    ("*", ".env"),
    ("**/*.md", "docs/deep/x.md"),
    ("src/**/*.ts", "src/x.ts"),
    ("src/{api,web}/*.ts", "src/web/**"),
    ("src/*.{ts,tsx}", "src/a.tsx"),
    ("src/[ab].ts", "src/?.ts"),
    ("src/[!a].ts", "src/b.*"),
    ("a*/b", "*a/b"),
    ("src/", "src/a.ts"),
    ("docs/v1.2/", "docs/v1.2/x.md"),
    (".github", ".github/workflows/ci.yml"),
    ("*/api", "src/*/routes.ts"),
    ("src/*", "src/api"),
]
DISJOINT = [
    ("src/*.ts", "src/deep/x.ts"),
    ("src/*.ts", "src/*.md"),
    ("**/*.md", "src/a.ts"),
    ("src/mcp/tools/**", "src/mcp/execution/m.ts"),
    ("src", "srcfoo"),
    ("src/a.ts", "src/a.ts/x"),
    ("docs/v1.2", "docs/v1.2/x.md"),
    ("src/*", "src/api/x.ts"),
    ("src/[ab].ts", "src/c.ts"),
    ("src/[!a].ts", "src/a.*"),
    ("src/?.ts", "src/ab.ts"),
    ("src/{api,web}/**", "src/cli/x.ts"),
    ("a/*/b.ts", "a/b.ts"),
    ("*.md", "docs/x.md"),
]


@pytest.mark.parametrize(("a", "b"), OVERLAPPING)
def test_claims_that_share_a_path_overlap_both_ways(a: str, b: str) -> None:
    assert overlaps(a, b)
    assert overlaps(b, a)


@pytest.mark.parametrize(("a", "b"), DISJOINT)
def test_claims_without_a_common_path_do_not_overlap_either_way(a: str, b: str) -> None:
    assert not overlaps(a, b)
    assert not overlaps(b, a)


@pytest.mark.parametrize("claim", [a for a, _ in OVERLAPPING + DISJOINT])
def test_every_valid_claim_overlaps_itself(claim: str) -> None:
    assert overlaps(claim, claim)


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("", "."),
        (".", "."),
        ("./", "."),
        ("./.", "."),
        ("src/..", "."),
        ("./src/a.ts", "src/a.ts"),
        ("src//a.ts", "src/a.ts"),
        ("src/./api/../a.ts", "src/a.ts"),
        ("  src/a.ts  ", "src/a.ts"),
        ("src/", "src/"),
        ("src//", "src/"),
        ("docs/v1.2/.", "docs/v1.2/"),
        ("docs/v1.2/x/..", "docs/v1.2/"),
        ("src/**", "src/**"),
        ("src/**/", "src/**"),
        ("src/**/**/*.ts", "src/**/*.ts"),
        ("./src/*.{ts,tsx}", "src/*.{ts,tsx}"),
        (".github", ".github"),
        ("a/!b", "a/!b"),
    ],
)
def test_normalize_claim_gives_the_canonical_form(claim: str, expected: str) -> None:
    assert normalize_claim(claim) == expected


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ("/etc/passwd", "absolute path"),
        ("../x", "escapes the repository"),
        ("src/../../x", "escapes the repository"),
        ("src\\a.ts", "backslash"),
        ("!src", "negation"),
        ("   ", "blank"),
        ("src/\na.ts", "control character"),
        ("src/[ab.ts", "unbalanced '['"),
        ("src/[a/b]", "unbalanced '['"),
        ("src/{a,b.ts", "unbalanced '{'"),
        ("src/a}.ts", "unbalanced '}'"),
        ("src/a].ts", "unbalanced ']'"),
        ("src/[z-a].ts", "reversed range"),
        ("*/../x", "'..' after a wildcard or alternation"),
        ("{a,b}/../x", "'..' after a wildcard or alternation"),
        ("{,a}/x", "empty, '.' or '..' segment"),
        ("a/{.,b}", "empty, '.' or '..' segment"),
        ("a/[.][.]", "matches no path"),
        ("x" * 1025, "longer than 1024 characters"),
        ("{a,b}" * 9, "more than 256 alternatives"),
        ("*a" * 300, "more than 512 automaton states"),
    ],
)
def test_normalize_claim_refuses_unsafe_claims_with_a_reason(claim: str, reason: str) -> None:
    with pytest.raises(InvalidClaim) as caught:
        normalize_claim(claim)
    assert reason in caught.value.reason


def test_invalid_claim_rejects_a_non_string_claim() -> None:
    with pytest.raises(InvalidClaim, match="a claim is a string"):
        normalize_claim(5)  # type: ignore[arg-type]


def test_overlaps_refuses_an_invalid_claim() -> None:
    with pytest.raises(InvalidClaim):
        overlaps("src", "../outside")


@pytest.mark.parametrize(
    ("claim", "directory"),
    [
        ("", True),
        (".", True),
        ("src", True),
        ("src/api", True),
        (".github", True),
        ("Makefile", True),
        ("src/", True),
        ("src/a.ts/", True),
        ("src/**", True),
        ("src/a.ts", False),
        ("README.md", False),
        ("docs/v1.2", False),
        ("src/*.ts", False),
        ("src/*", False),
        ("src/?", False),
        ("src/[ab]", False),
        ("src/{api,web}", True),
        ("src/{a.ts,b.ts}", False),
        ("src/{a.ts,lib}", True),
    ],
)
def test_directory_rule_without_a_repository(claim: str, directory: bool) -> None:
    assert is_directory_claim(claim) is directory


def test_existing_paths_decide_directory_ness_in_a_repository(tmp_path: Path) -> None:
    (tmp_path / "docs" / "v1.2").mkdir(parents=True)
    (tmp_path / "Makefile").write_text("all:\n")
    (tmp_path / "src.d").write_text("not a directory\n")
    assert is_directory_claim("docs/v1.2", repo_root=tmp_path)
    assert not is_directory_claim("Makefile", repo_root=tmp_path)
    assert not is_directory_claim("src.d", repo_root=tmp_path)
    assert is_directory_claim("Makefile/", repo_root=tmp_path)  # an explicit "/" still wins
    assert is_directory_claim("absent", repo_root=tmp_path)  # missing paths follow the rule
    assert not is_directory_claim("absent.txt", repo_root=tmp_path)
    assert not is_directory_claim("doc*/v1.2", repo_root=tmp_path)  # only literals are looked up


def test_overlap_follows_the_filesystem_when_a_repository_is_given(tmp_path: Path) -> None:
    (tmp_path / "docs" / "v1.2").mkdir(parents=True)
    (tmp_path / "Makefile").write_text("all:\n")
    assert not overlaps("docs/v1.2", "docs/v1.2/x.md")
    assert overlaps("docs/v1.2", "docs/v1.2/x.md", repo_root=tmp_path)
    assert overlaps("Makefile", "Makefile/x")
    assert not overlaps("Makefile", "Makefile/x", repo_root=tmp_path)


@pytest.mark.parametrize(
    ("ancestor", "descendant", "expected"),
    [
        ("src", "src/a.ts", True),
        ("src", "src/**/*.ts", True),
        ("src", "srcfoo", False),
        ("src", "src", True),
        ("src/*.ts", "src/*.ts", True),
        (".", "a/b/c", True),
        ("", "**", True),
        ("src/a.ts", "src", False),
        ("src/api", "src/a*/x.ts", False),
        ("./src/", "src/api/x.ts", True),
    ],
)
def test_is_ancestor_compares_literal_leading_segments(
    ancestor: str, descendant: str, expected: bool
) -> None:
    assert is_ancestor(ancestor, descendant) is expected


@pytest.mark.parametrize(
    ("claim", "path", "expected"),
    [
        ("src", "src/api/deep/x.ts", True),
        ("src", "src", True),
        ("src/a.ts", "src/a.ts", True),
        ("src/a.ts", "src/a.ts/x", False),
        ("src/*.ts", "src/.hidden.ts", True),
        ("src/*.ts", "src/sub/a.ts", False),
        ("src/**", "src", True),
        ("src/**/x.ts", "src/x.ts", True),
        ("src/**/x.ts", "src/a/b/x.ts", True),
        ("**", ".env", True),
        ("*", ".env", True),
        ("src/{api,web}/*.ts", "src/web/a.ts", True),
        ("src/[!a]*.ts", "src/b.ts", True),
        ("src/[!a]*.ts", "src/a.ts", False),
        ("src/[a-c].ts", "src/b.ts", True),
        ("src/[a-c].ts", "src/d.ts", False),
        ("src/[*].ts", "src/*.ts", True),
        ("src/[*].ts", "src/a.ts", False),
        ("src", "./src/../src/a.ts", True),
        ("src/a*", "src/a/b", False),
        (".", ".", True),
        ("**", ".", False),
        ("src", ".", False),
    ],
)
def test_covers_decides_a_concrete_path(claim: str, path: str, expected: bool) -> None:
    assert covers(claim, path) is expected


@pytest.mark.parametrize("path", ["/abs/path", "../up", "a/../../up"])
def test_paths_outside_the_repository_are_refused(path: str) -> None:
    with pytest.raises(InvalidClaim):
        normalize_path(path)


def test_covers_agrees_with_overlaps_for_literal_file_paths() -> None:
    paths = ["src/a.ts", "src/api/x.ts", "docs/README.md", ".github/ci.yml", "src/.env.ts"]
    for claim, _ in OVERLAPPING + DISJOINT:
        for path in paths:
            assert covers(claim, path) is overlaps(claim, path), (claim, path)


def test_matching_stays_exact_when_the_lazy_dfa_starts_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(automata, "_MAX_DFA_STATES", 3)
    claims_module.clear_caches()
    cases = {
        "src/a.ts": True,
        "src/x/y/b1.ts": True,
        "src/x/c.ts": False,
        "src/x/a.tsx": False,
        "lib/a.ts": False,
        "src/.a/a.ts": True,
    }
    for _ in range(3):
        for path, expected in cases.items():
            assert covers("src/**/[ab]*.ts", path) is expected, path
    claims_module.clear_caches()


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def _age(root: Path) -> None:
    """Date every directory an hour back, so the listing is trusted (not racily recent)."""
    old = (1_600_000_000, 1_600_000_000)
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, old)


def test_expand_claims_lists_covered_files_with_dot_files_but_not_git(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        ["src/a.ts", "src/.env", "src/api/x.ts", "docs/README.md", ".github/ci.yml", ".git/HEAD"],
    )
    assert expand_claims(tmp_path, ["."]) == [
        ".github/ci.yml",
        "docs/README.md",
        "src/.env",
        "src/a.ts",
        "src/api/x.ts",
    ]
    assert expand_claims(tmp_path, ["src/*", "./src/*", "src/a.ts"]) == ["src/.env", "src/a.ts"]
    assert expand_claims(tmp_path, ["**/*.md", "src/api"]) == ["docs/README.md", "src/api/x.ts"]
    assert expand_claims(tmp_path, ["nothing/here"]) == []
    assert expand_claims(tmp_path, []) == []


def test_expand_claims_sees_a_file_added_right_after_a_listing(tmp_path: Path) -> None:
    _tree(tmp_path, ["src/a.ts"])
    assert expand_claims(tmp_path, ["src"]) == ["src/a.ts"]
    (tmp_path / "src" / "b.ts").write_text("b")  # maybe within the same mtime tick
    assert expand_claims(tmp_path, ["src"]) == ["src/a.ts", "src/b.ts"]


def test_expand_claims_reuses_a_listing_until_a_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, ["src/a.ts", "src/api/x.ts"])
    _age(tmp_path)
    assert expand_claims(tmp_path, ["src"]) == ["src/a.ts", "src/api/x.ts"]

    def no_walk(path: str) -> None:
        raise AssertionError(f"walked {path} again")

    with monkeypatch.context() as patched:
        patched.setattr(os, "scandir", no_walk)
        assert expand_claims(tmp_path, ["src/api"]) == ["src/api/x.ts"]
    (tmp_path / "src" / "api" / "y.ts").write_text("y")
    assert expand_claims(tmp_path, ["src"]) == ["src/a.ts", "src/api/x.ts", "src/api/y.ts"]


def test_claim_index_returns_held_claims_that_overlap() -> None:
    index: ClaimIndex[str] = ClaimIndex()
    for claim, owner in [
        ("src/**", "j1"),
        ("src/a.ts", "j2"),
        ("docs/*.md", "j3"),
        ("lib/x", "j4"),
        ("*.md", "j5"),
    ]:
        index.add(claim, owner)
    assert len(index) == 5
    assert sorted(index.overlapping("./src/a.ts")) == [("src/**", "j1"), ("src/a.ts", "j2")]
    assert sorted(index.overlapping("src")) == [("src/**", "j1"), ("src/a.ts", "j2")]
    assert index.overlapping("docs/README.md") == [("docs/*.md", "j3")]
    assert sorted(index.overlapping("**/README.md")) == [
        ("*.md", "j5"),
        ("docs/*.md", "j3"),
        ("lib/x", "j4"),  # a directory claim: lib/x/README.md
        ("src/**", "j1"),
    ]
    assert index.overlapping("lib/y") == []
    assert len(index.overlapping(".")) == 5


def test_claim_index_add_is_idempotent_and_discard_removes_one_pair() -> None:
    index: ClaimIndex[str] = ClaimIndex()
    index.add("src/a.ts", "j1")
    index.add("./src/a.ts", "j1")
    index.add("src/a.ts", "j2")
    assert len(index) == 2
    index.discard("src/a.ts", "j1")
    index.discard("src/a.ts", "absent")
    index.discard("elsewhere/x", "j2")
    assert index.overlapping("src") == [("src/a.ts", "j2")]
    index.discard("src//a.ts", "j2")
    assert len(index) == 0
    assert index.overlapping(".") == []


def test_claim_index_checks_only_claims_on_the_querys_literal_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = [f"pkg{i}/src/*.ts" for i in range(200)]
    held += ["pkg7/*", "pkg7/src/a.ts/", "*/src/a.ts", "pkg70/src/a*"]
    index: ClaimIndex[str] = ClaimIndex()
    for claim in held:
        index.add(claim, claim)
    names = {claims_module._compiled(c, None).ident: c for c in held}
    checked: list[str] = []
    real = claims_module.decide

    def recording(
        query: CompiledClaim, candidate: CompiledClaim, resume: Resume | None = None
    ) -> bool:
        checked.append(names[candidate.ident])
        return real(query, candidate, resume)

    monkeypatch.setattr(claims_module, "decide", recording)
    found = index.overlapping("pkg7/src/a.ts")
    assert sorted(c for c, _ in found) == ["*/src/a.ts", "pkg7/src/*.ts", "pkg7/src/a.ts/"]
    # the literal pkg7/src/a.ts/ is decided by the walk itself, without a pairwise check
    assert sorted(checked) == ["*/src/a.ts", "pkg7/*", "pkg7/src/*.ts"]
