"""Landing a task's work on its target branch, at most once, whatever crashed before.

``Lander.land`` commits what the agent left in the worktree (with the ``Stitchwork-Job``
trailer, see ``trailers``), refuses commits whose trailer names another job, and integrates the
branch under the repository's merge lock per the merge policy: ``merge`` as it is, ``rebase``
after replaying it onto a moved target and running the gates again, ``branch-only`` not at all.
Under the lock, ``integrate`` first looks for the job's trailer on the target: a change an
earlier attempt landed is never merged again. Right before the target moves, the job is marked
as landing (``JobContext.begin_landing``); if anything fails after that, the target is read to
tell whether the change landed, and the mark is cleared only when it did not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from stitchwork.domain.continuation import GateFailure
from stitchwork.domain.repo_config import MergeStrategy, RepoConfig
from stitchwork.errors import Conflict, MergeConflict, TargetMoved
from stitchwork.runner.failpoints import failpoint
from stitchwork.runner.git import find_commit, git, is_ancestor
from stitchwork.runner.merge import integrate
from stitchwork.runner.trailers import commit_message, find_landed, forged_trailers
from stitchwork.runner.worktrees import Worktree, Worktrees
from stitchwork.runtime.context import JobContext, JobFailed, StepHandle

REBASE_ROUNDS = 3  # a target that keeps moving while the gates re-run fails the task after this

Revalidate = Callable[[], Awaitable[list[GateFailure]]]


class TaskRun(Protocol):
    """What landing needs of a task's run (``agent_task._Run``)."""

    wt: Worktree
    target: str
    config: RepoConfig

    def result(self, **extra: Any) -> dict[str, Any]: ...


class Lander:
    """Commits and integrates tasks' work; one per runner, shared by its jobs.

    Args:
        worktrees: the runner's worktrees.
        lock_dir: where per-repository merge locks live (shared by every process).
    """

    def __init__(self, worktrees: Worktrees, lock_dir: Path) -> None:
        self.worktrees = worktrees
        self.lock_dir = lock_dir

    async def land(
        self,
        ctx: JobContext,
        run: TaskRun,
        step: StepHandle,
        *,
        prompt: str,
        issue_ref: str | None,
        revalidate: Revalidate,
    ) -> dict[str, Any]:
        """Commit, then integrate per the merge policy; rebased work passes its gates again
        (``revalidate``) before it lands. Lands at most once: see the module docstring.

        Returns:
            ``commit`` and ``merged`` (and ``recovered`` when an earlier attempt had landed
            the change) for the job's result.
        """
        wt = run.wt
        job_id = str(ctx.job.id)
        ref = issue_ref
        commit = await self.worktrees.commit(wt, commit_message(prompt, job_id, issue_ref=ref))
        head = await self.worktrees.head(wt)
        if commit is not None:
            await step.output(f"committed {commit[:12]} on {wt.branch}\n")
        elif head == wt.base_commit:
            await step.output("nothing changed: nothing to merge\n")
            return {"commit": None, "merged": False}
        else:
            await step.output(f"nothing left to commit; landing the commits on {wt.branch}\n")
        failpoint("land.committed")
        forged = await forged_trailers(wt.repo, wt.base_commit, head, job_id)
        if forged:
            raise JobFailed(
                f"commit {forged[0][:12]} on {wt.branch} has a Stitchwork-Job trailer naming "
                "another job; stitchwork does not land commits that claim another job's change",
                result=run.result(worktree=str(wt.path)),
                retryable=False,
            )
        strategy = run.config.merge.strategy
        subject = commit_message(prompt, job_id).splitlines()[0]
        merge_message = commit_message(f"Merge {wt.branch}: {subject}", job_id, issue_ref=ref)
        landing = False

        async def begin_landing() -> None:
            nonlocal landing
            await ctx.begin_landing()
            landing = True

        try:
            for _ in range(REBASE_ROUNDS):
                if strategy is MergeStrategy.REBASE:
                    await self._rebase_onto_target(run, step, revalidate)
                try:
                    merged = await integrate(
                        wt.repo,
                        run.wt,
                        target_branch=run.target,
                        strategy=strategy.value,
                        message=merge_message,
                        lock_dir=self.lock_dir,
                        # Rebased work lands exactly as its gates saw it, or not at all.
                        fast_forward_only=strategy is MergeStrategy.REBASE,
                        job_id=job_id,
                        since=ctx.job.created_at,
                        before_swap=begin_landing,
                    )
                    break
                except TargetMoved:
                    continue  # moved again while the gates ran: rebase and check again
            else:
                raise JobFailed(f"{run.target} kept moving; gave up after {REBASE_ROUNDS} rebases")
        except MergeConflict as exc:
            raise JobFailed(
                f"merge conflict on {', '.join(exc.paths)}",
                result=run.result(worktree=str(run.wt.path), conflicts=list(exc.paths)),
                retryable=False,
            ) from exc
        except Exception as exc:
            if landing:  # the target may have moved before the error: it says what happened
                found = await self._settle(ctx, run)
                if found is not None:
                    await step.output(f"{run.target} is now {found[:12]} (checked after: {exc})\n")
                    return {"commit": found, "merged": True}
            if isinstance(exc, Conflict):  # e.g. the target is checked out in the user's checkout
                raise JobFailed(str(exc), result=run.result(worktree=str(run.wt.path))) from exc
            raise
        await step.output(
            (
                f"{run.target} already holds this job's change as {merged.commit[:12]}: "
                "an earlier attempt landed it; not merging again"
                if merged.already
                else f"{merged.strategy.value}: {run.target} is now {merged.commit[:12]}"
                + (" (the target had moved)" if merged.target_moved else "")
            )
            + "\n"
        )
        result: dict[str, Any] = {
            "commit": merged.commit,
            "merged": strategy is not MergeStrategy.BRANCH_ONLY,
        }
        return {**result, "recovered": True} if merged.already else result

    async def _settle(self, ctx: JobContext, run: TaskRun) -> str | None:
        """After an error once landing began: the landed commit, or ``None`` (and the job's
        landing mark cleared) when the target shows the change did not land."""
        found = await find_landed(
            run.wt.repo, run.target, str(ctx.job.id), since=ctx.job.created_at
        )
        if found is None:
            await ctx.end_landing()
        return found

    async def _rebase_onto_target(
        self, run: TaskRun, step: StepHandle, revalidate: Revalidate
    ) -> None:
        """Replay the task's commits onto a target that moved, and run the gates on the
        result: what lands is always what passed."""
        wt = run.wt
        head = await find_commit(f"refs/heads/{run.target}", cwd=wt.repo)
        if head is None or await is_ancestor(head, "HEAD", cwd=wt.path):
            return
        await step.output(f"{run.target} moved to {head[:12]}: rebasing and re-running gates\n")
        rebased = await git("rebase", head, cwd=wt.path, check=False)
        if rebased.returncode != 0:
            await git("rebase", "--abort", cwd=wt.path, check=False)
            raise JobFailed(
                f"rebase onto {run.target} failed: {rebased.text[-500:]}",
                result=run.result(worktree=str(wt.path)),
                retryable=False,
            )
        run.wt = wt = self.worktrees.rebased(wt, head)
        failures = await revalidate()
        if failures:
            raise JobFailed(
                "gates failed after rebasing onto the moved target: "
                + ", ".join(f.gate for f in failures),
                result=run.result(worktree=str(wt.path)),
                retryable=False,
            )
