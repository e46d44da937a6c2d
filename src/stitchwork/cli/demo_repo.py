"""The demo's sample repository and its plan of agent tasks (``stitchwork demo``).

The repository is ``shop``, a small Python package with stdlib unit tests, a lint script and
a ``stitchwork.toml`` whose mandatory gates are ``lint`` and ``tests``. The plan's eight tasks
are played by the built-in ``script`` agent; each writes code and its test, and claims exactly
the files it writes. ``catalog-search`` and ``catalog-csv`` both append to ``shop/catalog.py``,
so the scheduler runs them one after the other; ``tax`` leaves a trailing space on its first
attempt, is rejected by the lint gate and fixes it on its second.

Everything here is data built from the interpreter's path (the gates run it), so tests check
the plan and the files without a server; only ``create_sample_repo`` touches the disk.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from stitchwork.runner.git import GitIdentity, git_env

ISSUES = "demo/app"
TARGET_BRANCH = "main"
USER_BRANCH = "workspace"  # the user's checkout stays here; agents merge into main
NOTES_FILE = "NOTES.md"  # the user's uncommitted work, which nothing may touch
NOTES_TEXT = "# My notes\n\nWork in progress, not committed yet.\n"
FLAKY_TASK = "tax"
CONCURRENCY = 3
MAX_GATE_ATTEMPTS = 3
# The identity of the sample repository's first commit only; stitchwork commits as itself.
DEMO_AUTHOR = GitIdentity("Demo User", "demo@example.invalid")
# Safe on any machine: no signing prompt, none of the user's hooks.
_GIT_CONFIG = ("-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null")
_START = "start"  # the owner of the first commit's files in demo_sources.txt


@dataclass(frozen=True)
class Edit:
    """A file a task writes, or appends to when ``append``."""

    path: str
    content: str
    append: bool = False


@functools.cache
def _sections() -> dict[str, tuple[Edit, ...]]:
    """Every file of the demo by owner, in order.

    ``demo_sources.txt`` holds them as "==> OWNER PATH" sections: OWNER "start" is the first
    commit, otherwise the task that writes the file (or, with "+PATH", appends to it).
    """
    sources = (resources.files("stitchwork.cli") / "demo_sources.txt").read_text("utf-8")
    by_owner: dict[str, list[Edit]] = {}
    for section in ("\n" + sources).split("\n==> ")[1:]:
        head, _, body = section.rstrip("\n").partition("\n")
        owner, path = head.split(" ")
        edit = Edit(path.removeprefix("+"), body + "\n" if body else "", path.startswith("+"))
        by_owner.setdefault(owner, []).append(edit)
    return {owner: tuple(edits) for owner, edits in by_owner.items()}


@dataclass(frozen=True)
class DemoTask:
    """One node of the demo plan: an issue, and the edits the ``script`` agent makes for it."""

    id: str
    issue: int
    title: str  # the prompt's first line, which becomes the commit subject
    brief: str
    after: tuple[str, ...] = ()
    think_s: float = 2.0  # a pause before the edits, so that the live view has time to show

    @property
    def issue_ref(self) -> str:
        return f"{ISSUES}#{self.issue}"

    @property
    def prompt(self) -> str:
        return f"{self.title}\n\n{self.brief}\n\nIssue: {self.issue_ref}\n"

    @property
    def edits(self) -> tuple[Edit, ...]:
        return _sections()[self.id]

    @property
    def claims(self) -> list[str]:
        """Exactly the files the task changes."""
        return [edit.path for edit in self.edits]


TASKS = (
    DemoTask(
        "money", 12, "Add percent_of() with half-to-even rounding",
        "Discounts and tax both need a percentage of an amount in cents: add "
        "shop.money.percent_of(cents, percent), rounding half to even, with tests.",
    ),
    DemoTask(
        "catalog-search", 16, "Search the catalog by product name",
        "Add shop.catalog.search(catalog, text): a case-insensitive match on the name, "
        "cheapest first, with tests.",
        think_s=2.5,
    ),
    DemoTask(
        "catalog-csv", 19, "Load the catalog from CSV",
        "Add shop.catalog.load_csv(text) reading sku,name,price (in dollars) into a Catalog "
        "with prices in cents, with tests.",
    ),
    DemoTask(
        "discounts", 13, "Add discount codes",
        "Add shop/discounts.py: discount_cents(subtotal, code) for WELCOME10 and SPRING25, "
        "case-insensitive, using percent_of; with tests.",
        after=("money",),
    ),
    DemoTask(
        FLAKY_TASK, 14, "Compute sales tax per region",
        "Add shop/tax.py: tax_cents(taxable, region) for CA, NY and OR using percent_of; "
        "with tests.",
        after=("money",),
    ),
    DemoTask(
        "cart-discounts", 15, "Apply a discount code to the cart total",
        "Add Cart.total_cents(code=None): the subtotal minus the code's discount; with tests.",
        after=("discounts",),
    ),
    DemoTask(
        "receipt", 17, "Print a receipt with discount, tax and total",
        "Add shop/receipt.py: receipt(cart, region, code=None) with each line, the subtotal, "
        "the discount, the tax on the discounted total and the total; with tests.",
        after=("cart-discounts", FLAKY_TASK),
        think_s=2.5,
    ),
    DemoTask(
        "cli", 18, "Add a `python -m shop` receipt command",
        "Add shop/__main__.py printing a receipt for SKU[:QUANTITY] arguments from a CSV "
        "catalog, with --region and --code; test it and show its use in the README.",
        after=("receipt", "catalog-csv"),
    ),
)  # fmt: skip


def gate_commands(python: str) -> dict[str, list[str]]:
    """The repository's gates as argv lists, run from the root of a checkout."""
    return {"lint": [python, "tools/lint.py"], "tests": [python, "-m", "unittest", "-q"]}


def repo_config(python: str) -> str:
    """The sample repository's ``stitchwork.toml``."""

    def argv(parts: list[str]) -> str:  # JSON string escapes are TOML basic-string escapes
        return "[" + ", ".join(json.dumps(part, ensure_ascii=False) for part in parts) + "]"

    gates = gate_commands(python)
    return (
        "# Every agent task must pass these gates (and the built-in claims gate) before its\n"
        "# work is merged into main; a rejected task gets another attempt, up to 3.\n"
        f"max_gate_attempts = {MAX_GATE_ATTEMPTS}\n\n"
        f'[gates.lint]\ncommand = {argv(gates["lint"])}\ntimeout = "1m"\n\n'
        f'[gates.tests]\ncommand = {argv(gates["tests"])}\ntimeout = "2m"\n\n'
        '[quality_rails]\nagent-task = ["lint", "tests"]\n'
    )


def sample_files(python: str) -> dict[str, str]:
    """The sample repository's files on its first commit, by repo-relative path."""
    files = {edit.path: edit.content for edit in _sections()[_START]}
    return {**files, "stitchwork.toml": repo_config(python)}


def _sloppy(edit: Edit) -> Edit:
    """The flaky task's first try: the same file with a trailing space after its rates."""
    return Edit(edit.path, edit.content.replace('"0"}\n', '"0"} \n', 1), edit.append)


def task_script(task: DemoTask, python: str, attempt: int = 1) -> list[dict[str, Any]]:
    """What the ``script`` agent does on ``attempt``: think (a pause, token usage), edit,
    then run its own new tests, as a careful agent does; on the flaky task's second
    attempt, fix the line the lint gate reported and run the linter."""
    size = sum(len(edit.content) for edit in task.edits)
    if task.id == FLAKY_TASK and attempt == 2:
        fix = next(edit for edit in task.edits if edit.path.startswith("shop/"))
        return [
            {"sleep": 1.0},
            {"tokens": [2400 + size, 90]},
            {"write": fix.path, "content": fix.content},
            {"run": [python, "tools/lint.py"]},
        ]
    edits = [_sloppy(e) if task.id == FLAKY_TASK else e for e in task.edits]
    tests = [e.path[:-3].replace("/", ".") for e in edits if e.path.startswith("tests/")]
    return [
        {"sleep": task.think_s},
        {"tokens": [1800 + 3 * size, size // 3]},
        *({"append" if e.append else "write": e.path, "content": e.content} for e in edits),
        {"run": [python, "-m", "unittest", "-q", *tests]},
    ]


def demo_plan(repo: Path, python: str) -> dict[str, Any]:
    """The plan as ``POST /api/v1/executions`` takes it, for the sample repository at
    ``repo`` (absolute); ``python`` runs the agents' own test commands."""
    nodes = []
    for task in TASKS:
        payload: dict[str, Any] = {
            "repo": str(repo),
            "prompt": task.prompt,
            "issue_ref": task.issue_ref,
            "target_branch": TARGET_BRANCH,
            "script": task_script(task, python),
        }
        if task.id == FLAKY_TASK:
            payload["on_attempt"] = {"2": task_script(task, python, attempt=2)}
        nodes.append(
            {
                "id": task.id,
                "title": task.title,
                "job_type": "agent-task",
                "claims": task.claims,
                "mode": "write",
                "payload": payload,
                "metadata": {"issue": task.issue_ref},
            }
        )
    return {
        "name": "shop: discounts, tax and receipts",
        "concurrency": CONCURRENCY,
        "repo": str(repo),
        "nodes": nodes,
        "edges": [[dep, task.id] for task in TASKS for dep in task.after],
    }


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` on any machine: no prompts, hooks or signing, and the demo's own
    identity for commits. Returns stdout without its final newline.

    Raises:
        subprocess.CalledProcessError: git failed (its stderr is on the exception).
    """
    done = subprocess.run(
        ["git", *_GIT_CONFIG, *args],
        cwd=repo,
        env=git_env(identity=DEMO_AUTHOR),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.rstrip("\n")


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def create_sample_repo(path: Path, python: str) -> str:
    """Create the sample repository at ``path`` (a new directory); returns its first commit.

    ``main`` holds the first commit. The user's checkout is left on ``USER_BRANCH`` with an
    uncommitted ``NOTES_FILE``, as someone's working copy would be: tasks merge into ``main``,
    which must not be checked out, and the demo can show that the checkout was not touched.
    """
    path.mkdir(parents=True)
    git(path, "init", "-q")
    git(path, "symbolic-ref", "HEAD", f"refs/heads/{TARGET_BRANCH}")  # any git version
    write_files(path, sample_files(python))
    git(path, "add", "--all")
    git(path, "commit", "-q", "-m", "Start the shop package")
    git(path, "checkout", "-q", "-b", USER_BRANCH)
    (path / NOTES_FILE).write_text(NOTES_TEXT, encoding="utf-8")
    return git(path, "rev-parse", "HEAD")
