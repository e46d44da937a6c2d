"""A cached listing of a repository's files, rebuilt when one of its directories changes.

A listing is trusted while every walked directory keeps its mtime (adding, removing or renaming
an entry changes its directory's mtime). A directory modified within ``RACY_NS`` of the listing
may change again without a visible mtime change (coarse timestamps), so such a listing is used
once and then rebuilt, like git's "racily clean" entries. Caches are process-wide, for one
thread at a time.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

RACY_NS = 2_000_000_000
_MAX_TREES = 16
_MAX_RESULTS = 256


@dataclass(slots=True)
class RepoTree:
    root: str
    dirs: tuple[tuple[str, int], ...]  # (absolute path, mtime_ns) of every walked directory
    files: tuple[str, ...]  # repo-relative posix paths, sorted
    trusted: bool
    results: OrderedDict[object, tuple[str, ...]] = field(default_factory=OrderedDict)
    """Answers computed from this listing, dropped with it."""

    def remember(self, key: object, value: tuple[str, ...]) -> None:
        self.results[key] = value
        if len(self.results) > _MAX_RESULTS:
            self.results.popitem(last=False)

    def still_valid(self) -> bool:
        if not self.trusted:
            return False
        try:
            return all(os.stat(path).st_mtime_ns == mtime for path, mtime in self.dirs)
        except OSError:
            return False


_trees: OrderedDict[str, RepoTree] = OrderedDict()


def listing(repo_root: Path) -> RepoTree:
    """Every file under ``repo_root`` except ``.git`` entries; symlinks are files, not followed."""
    root = os.path.abspath(repo_root)
    tree = _trees.get(root)
    if tree is None or not tree.still_valid():
        tree = _trees[root] = _walk(root)
        if len(_trees) > _MAX_TREES:
            _trees.popitem(last=False)
    _trees.move_to_end(root)
    return tree


def _walk(root: str) -> RepoTree:
    started_ns = time.time_ns()
    dirs: list[tuple[str, int]] = []
    files: list[str] = []
    pending = [(root, "")]
    while pending:
        directory, rel = pending.pop()
        dirs.append((directory, os.stat(directory).st_mtime_ns))
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name == ".git":  # the repository's own store, or a worktree's pointer
                    continue
                child = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, child + "/"))
                else:
                    files.append(child)
    trusted = all(mtime < started_ns - RACY_NS for _, mtime in dirs)
    return RepoTree(root, tuple(dirs), tuple(sorted(files)), trusted)


def clear() -> None:
    """Forget every listing."""
    _trees.clear()
