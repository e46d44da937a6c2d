"""Every commit a task makes names its job, so the target branch says what landed.

Each commit stitchwork makes for a job (the task's commit and its merge commit) ends with the
git trailer ``Stitchwork-Job: <job id>``. Before it integrates anything, and again under the
repository's merge lock, the runner looks for that trailer on the target branch: when it is
there, the job's change already landed (an earlier attempt crashed after moving the target)
and the job completes with that commit instead of landing it twice.

Commits the agent made itself may not carry a ``Stitchwork-Job`` trailer naming another job
(``forged_trailers``): otherwise an agent could make another job's change look landed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from stitchwork.runner.git import git

TRAILER = "Stitchwork-Job"
ISSUE_TRAILER = "Stitchwork-Issue"
# Commit dates come from the clocks of the machines that made the commits: look this much
# further back than the job's creation, so a skewed clock never hides a landed change.
CLOCK_SKEW = timedelta(days=1)
SUBJECT_CHARS = 72


def commit_message(subject: str, job_id: str, *, issue_ref: str | None = None) -> str:
    """A commit message whose last paragraph holds the job's trailers."""
    first = (subject.strip().splitlines() or ["agent task"])[0][:SUBJECT_CHARS] or "agent task"
    trailers = [f"{TRAILER}: {job_id}"]
    if issue_ref:
        trailers.append(f"{ISSUE_TRAILER}: {issue_ref.splitlines()[0][:200]}")
    return f"{first}\n\n" + "\n".join(trailers) + "\n"


async def find_landed(
    repo: Path, target_branch: str, job_id: str, *, since: datetime | None = None
) -> str | None:
    """The newest commit on ``target_branch`` whose ``Stitchwork-Job`` trailer names
    ``job_id``, or ``None``. Only commits dated after ``since`` (less ``CLOCK_SKEW``) are read,
    so the search does not walk the whole history."""
    args = [
        "log",
        "-n",
        "1",
        "--format=%H",
        "--extended-regexp",
        f"--grep=^{TRAILER}: {job_id.replace('.', '[.]')}$",
    ]
    if since is not None:
        args.append(f"--since={int((since - CLOCK_SKEW).timestamp())}")
    found = await git(*args, f"refs/heads/{target_branch}", "--", cwd=repo, check=False)
    if found.returncode != 0:
        return None  # no such branch (yet): nothing landed on it
    return found.text or None


async def commits_between(repo: Path, base: str, head: str) -> list[tuple[str, str]]:
    """(sha, subject) of the commits in ``base..head``, oldest first."""
    out = await git("log", "--reverse", "--format=%H%x00%s", f"{base}..{head}", "--", cwd=repo)
    return [tuple(line.split("\0", 1)) for line in out.text.splitlines() if line]  # type: ignore[misc]


async def forged_trailers(repo: Path, base: str, head: str, job_id: str) -> list[str]:
    """Commits in ``base..head`` whose ``Stitchwork-Job`` trailer names another job."""
    out = await git(
        "log",
        f"--format=%H%x00%(trailers:key={TRAILER},valueonly,separator=%x01)",
        f"{base}..{head}",
        "--",
        cwd=repo,
    )
    forged: list[str] = []
    for line in out.text.splitlines():
        sha, _, values = line.partition("\0")
        if any(v.strip() and v.strip() != job_id for v in values.split("\1")):
            forged.append(sha)
    return forged
