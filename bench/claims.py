"""Claims benchmark: exact overlap decisions per second and ClaimIndex lookup latency.

* overlap decisions/s for random glob pairs: cold (every cache cleared before each decision, so
  each one normalises, compiles both claims and searches the product), with compiled claims
  cached (each pair decided for the first time), and fully cached (the same pairs again);
* ClaimIndex lookups against ``--held`` random held claims (the mix in ``KINDS``), after 500
  warm-up lookups: p50/p99 latency of new queries (each normalised, compiled and decided for
  the first time), of the same queries repeated, and of new queries that start with a
  wildcard; next to a full scan that runs ``overlaps`` against every held claim.

Times are thread CPU time, so other processes on a busy machine do not inflate them.

Run: ``.venv/bin/python bench/claims.py [--pairs 5000] [--held 1000] [--queries 2000]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from stitchwork.domain.claims import ClaimIndex, clear_caches, overlaps

TOP = ["src", "lib", "docs", "tests", "bench", "tools", "web", "api", "cli"]
TOP += [f"pkg{i}" for i in range(20)]
MID = ["api", "core", "db", "models", "routes", "utils", "ui", "mcp", "auth", "jobs"]
MID += [f"mod{i}" for i in range(20)]
FILES = ["index.ts", "a.ts", "main.py", "README.md", "Makefile", ".env", "app.tsx"]
FILES += [f"f{i}.ts" for i in range(20)]
EXTS = ["ts", "tsx", "py", "md", "json"]

# (weight, kind): mostly literal paths and subtrees, as plans write them; a few claims start
# with a wildcard and so sit at the index root, compared with every query.
KINDS = [
    (30, "file"),
    (20, "directory"),
    (15, "subtree"),
    (15, "extension"),
    (8, "wildcard segment"),
    (7, "alternation"),
    (5, "leading wildcard"),
]


def random_claim(rng: random.Random, kind: str | None = None) -> str:
    kind = kind or rng.choices([k for _, k in KINDS], [w for w, _ in KINDS])[0]
    top, mid, sub = rng.choice(TOP), rng.choice(MID), rng.choice(MID)
    ext, name = rng.choice(EXTS), rng.choice(FILES)
    return {
        "file": rng.choice([f"{top}/{mid}/{name}", f"{top}/{mid}/{sub}/{name}", name]),
        "directory": rng.choice([top, f"{top}/{mid}", f"{top}/{mid}/{sub}"]),
        "subtree": rng.choice([f"{top}/**", f"{top}/{mid}/**", f"{top}/{mid}/{sub}/"]),
        "extension": rng.choice([f"{top}/{mid}/*.{ext}", f"{top}/**/*.{ext}"]),
        "wildcard segment": rng.choice([f"{top}/*/{name}", f"{top}/*/{sub}", f"{top}/{mid}/a*"]),
        "alternation": rng.choice([f"{top}/{{{mid},{sub}}}/**", f"{top}/{mid}/*.{{ts,tsx}}"]),
        "leading wildcard": rng.choice([f"**/*.{ext}", f"*/{mid}/**", f"**/{name}"]),
    }[kind]


def rate(label: str, pairs: list[tuple[str, str]], decide: Callable[[str, str], object]) -> None:
    started = time.thread_time()
    for a, b in pairs:
        decide(a, b)
    elapsed = time.thread_time() - started
    print(f"  {label:<34} {len(pairs) / elapsed:>12,.0f} decisions/s")


def cold(a: str, b: str) -> bool:
    clear_caches()
    return overlaps(a, b)


def percentiles(samples_ns: list[int]) -> str:
    cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return f"p50 {cuts[49] / 1e3:>8.1f} us   p99 {cuts[98] / 1e3:>8.1f} us"


def calibration_ns() -> float:
    """CPU time of one trivial interpreter loop step, to compare machines."""
    started = time.thread_time_ns()
    total = 0
    for i in range(1_000_000):
        total += i & 3
    return (time.thread_time_ns() - started) / 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"machine: {calibration_ns():.0f} ns per trivial Python loop step (CPU time)")

    pairs = [(random_claim(rng), random_claim(rng)) for _ in range(args.pairs)]
    share = sum(overlaps(a, b) for a, b in pairs) / len(pairs)
    print(f"overlap decisions ({len(pairs):,} random glob pairs, {share:.0%} overlapping)")
    rate("cold (all caches cleared each time)", pairs[: max(1, len(pairs) // 5)], cold)
    clear_caches()
    for a, b in pairs:  # compile every claim, but decide no pair yet
        overlaps(a, a)
        overlaps(b, b)
    rate("compiled claims cached, new pairs", pairs, overlaps)
    rate("fully cached (same pairs again)", pairs, overlaps)

    clear_caches()
    index: ClaimIndex[int] = ClaimIndex()
    held = [random_claim(rng) for _ in range(args.held)]
    for i, claim in enumerate(held):
        index.add(claim, i)
    for _ in range(500):  # warm the held claims' lazy automata, as a running table would
        index.overlapping(random_claim(rng))
    queries = [random_claim(rng) for _ in range(args.queries)]
    leading = [random_claim(rng, "leading wildcard") for _ in range(max(1, args.queries // 10))]
    mix = ", ".join(f"{w}% {k}" for w, k in KINDS)
    print(f"ClaimIndex lookups ({len(index):,} held claims; mix: {mix})")
    for label, batch in [
        ("new queries (warm index)", queries),
        ("repeated queries", queries),
        ("only leading-wildcard queries", leading),
    ]:
        samples: list[int] = []
        hits: list[int] = []
        for query in batch:
            started = time.thread_time_ns()
            found = index.overlapping(query)
            samples.append(time.thread_time_ns() - started)
            hits.append(len(found))
        print(
            f"  {label:<34} {percentiles(samples)}   "
            f"({len(batch):,} queries, {statistics.fmean(hits):.1f} overlapping on average)"
        )
    scan: list[int] = []
    for query in queries[:200]:
        started = time.thread_time_ns()
        [c for c in held if overlaps(query, c)]
        scan.append(time.thread_time_ns() - started)
    print(f"  {'full scan without the index':<34} {percentiles(scan)}   (200 repeated queries)")


if __name__ == "__main__":
    main()
