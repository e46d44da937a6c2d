"""The ``agent-task`` job type: a coding agent's task, from worktree to merge.

SETUP creates the task's worktree on ``stitchwork/<job-id>`` from the target branch and reads
the repository's ``stitchwork.toml`` from there (the committed config of the target branch,
which the agent cannot weaken). EXECUTION runs the agent (an ``ai_action`` step). VALIDATION
runs every mandatory gate; when one fails, the agent runs again in the same worktree with a
continuation prompt listing every failure, up to ``max_gate_attempts``. CLEANUP commits,
integrates under the repository's merge lock, and removes the worktree; a failed task keeps
it for inspection (its path is in the job's result) until ``stitchwork gc``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitchwork.domain.continuation import GateFailure, continuation_prompt
from stitchwork.domain.events import EventType
from stitchwork.domain.guards import MERGING_JOB_TYPES, REPO_WRITE, grants
from stitchwork.domain.locks import LockMode
from stitchwork.domain.repo_config import AgentProfile, MergeStrategy, RepoConfig
from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.errors import (
    Conflict,
    GitError,
    GuardRailDenied,
    InvalidRequest,
    MergeConflict,
    TargetMoved,
)
from stitchwork.runner.adapters import adapter_for
from stitchwork.runner.agents import AgentTask
from stitchwork.runner.gates import GateResult, run_gates
from stitchwork.runner.git import find_commit, git, is_ancestor
from stitchwork.runner.merge import integrate
from stitchwork.runner.worktrees import Worktree, Worktrees
from stitchwork.runtime.context import JobContext, JobFailed, StepHandle
from stitchwork.services.agent_tasks import (
    allowed_profile,
    check_agent_task,
    read_repo_config,
)
from stitchwork.services.job_types import AgentTaskPayload
from stitchwork.storage.steps import JobLost

REBASE_ROUNDS = 3  # a target that keeps moving while the gates re-run fails the task after this


class _StepSink:
    """Agent output, tool calls and token usage go to the agent's ``ai_action`` step."""

    def __init__(self, step: StepHandle) -> None:
        self.step = step

    async def output(self, text: str) -> None:
        await self.step.output(text)

    async def tool_called(self, name: str, summary: dict[str, Any]) -> None:
        await self.step.event(EventType.AI_TOOL_CALLED, {"tool": name, **summary})

    async def tokens(self, tokens_input: int, tokens_output: int) -> None:
        await self.step.tokens(tokens_input, tokens_output)


@dataclass
class _Run:
    """What one task has done so far; becomes the job's result."""

    wt: Worktree
    config: RepoConfig
    profile: AgentProfile
    target: str
    job_type: str
    attempts: int = 0
    rejections: int = 0
    gates: list[GateResult] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    tokens: tuple[int, int] = (0, 0)
    summary: str = ""  # the agent's last words (a review's findings)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "branch": self.wt.branch,
            "base_commit": self.wt.base_commit,
            "target_branch": self.target,
            "profile": self.profile.name,
            "attempts": self.attempts,
            "rejections": self.rejections,
            "gates": [g.payload() for g in self.gates],
            "changed": self.changed,
            "tokens_input": self.tokens[0],
            "tokens_output": self.tokens[1],
            **extra,
        }


class AgentTaskRunner:
    """Runs ``agent-task`` jobs; one per worker process, shared by its concurrent jobs.

    Args:
        work_root: where per-repository work dirs (job worktrees) live, outside every checkout.
        lock_dir: where per-repository merge locks live (shared by every process).
        grace_s: seconds between SIGTERM and SIGKILL when an agent is stopped.
    """

    def __init__(self, work_root: Path, lock_dir: Path, *, grace_s: float = 2.0) -> None:
        self.worktrees = Worktrees(work_root)
        self.lock_dir = lock_dir
        self.grace_s = grace_s

    async def __call__(self, ctx: JobContext) -> dict[str, Any] | None:
        payload = AgentTaskPayload.model_validate(ctx.job.payload)
        run = await self._setup(ctx, payload)
        outcome = "failed"
        try:
            result = await self._work(ctx, payload, run)
            outcome = "stopped" if result.get("stopped") else "completed"
            return result
        except (asyncio.CancelledError, JobLost):  # cancelled, or taken away from us
            outcome = "stopped"
            raise
        finally:
            await asyncio.shield(self._cleanup(ctx, run, outcome))

    # -- phases ----------------------------------------------------------------------------

    async def _setup(self, ctx: JobContext, payload: AgentTaskPayload) -> _Run:
        repo = Path(payload.repo)
        async with ctx.step("prepare worktree", phase=StepPhase.SETUP) as step:
            try:
                checkout_config, _ = check_agent_task(
                    payload.model_dump(), ctx.job.agent_profile, job_type=ctx.job.type
                )
                target = payload.target_branch or checkout_config.merge.target_branch
                wt = await self.worktrees.create(repo, str(ctx.job.id), target_branch=target)
            except (InvalidRequest, GuardRailDenied, GitError) as exc:
                raise JobFailed(str(exc), retryable=False) from exc
            # The gates, rails and profiles that count are the target branch's committed ones.
            try:
                config = read_repo_config(wt.path)
                profile = allowed_profile(
                    config, payload.profile or ctx.job.agent_profile, ctx.job.type
                )
            except (InvalidRequest, GuardRailDenied) as exc:
                await self.worktrees.remove(wt, delete_branch=True)
                raise JobFailed(str(exc), retryable=False) from exc
            await step.output(
                f"worktree {wt.path}\nbranch {wt.branch} from {target} at {wt.base_commit[:12]}\n"
                f"profile {profile.name}; "
                f"gates: {', '.join(config.mandatory_gates(ctx.job.type))}\n"
            )
        return _Run(wt, config, profile, target, ctx.job.type)

    async def _work(self, ctx: JobContext, payload: AgentTaskPayload, run: _Run) -> dict[str, Any]:
        prompt = payload.prompt
        limit = run.config.max_gate_attempts
        for attempt in range(1, limit + 1):
            run.attempts = attempt
            if not await self._agent(ctx, payload, run, prompt, attempt):
                return run.result(stopped=True)
            failures = await self._validate(ctx, payload, run, attempt)
            if not failures:
                break
            run.rejections += 1
            if attempt == limit:
                names = ", ".join(f.gate for f in failures)
                raise JobFailed(
                    f"gates failed on all {limit} attempts: {names}",
                    result=run.result(worktree=str(run.wt.path)),
                    retryable=False,
                )
            prompt = continuation_prompt(
                payload.prompt, failures, attempt=attempt + 1, max_attempts=limit
            )
        if run.job_type not in MERGING_JOB_TYPES:  # a review: its output is the result
            return run.result(merged=False, summary=run.summary)
        async with ctx.step("commit and merge", phase=StepPhase.CLEANUP) as step:
            landed = await self._land(ctx, payload, run, step)
        return run.result(**landed)

    async def _agent(
        self, ctx: JobContext, payload: AgentTaskPayload, run: _Run, prompt: str, attempt: int
    ) -> bool:
        """Run the agent once; False when a stop was requested."""
        profile = run.profile
        adapter = adapter_for(
            profile.adapter.value,
            command=profile.command or None,
            output_format=profile.output_format.value,
            grace_s=self.grace_s,
        )
        task = AgentTask(
            prompt=prompt,
            worktree=run.wt.path,
            issue_ref=payload.issue_ref or ctx.job.issue_ref,
            attempt=attempt,
            payload=ctx.job.payload,
            timeout_s=profile.timeout.total_seconds(),
            stop=ctx.stop_requested,
        )
        name = f"agent {profile.name} (attempt {attempt})"
        async with ctx.step(name, phase=StepPhase.EXECUTION, type_=StepType.AI_ACTION) as step:
            try:
                outcome = await adapter.run(task, _StepSink(step))
            except InvalidRequest as exc:  # a script the agent cannot apply
                raise JobFailed(str(exc), retryable=False, result=run.result()) from exc
            run.tokens = (
                run.tokens[0] + outcome.tokens_input,
                run.tokens[1] + outcome.tokens_output,
            )
            run.summary = outcome.summary
            if outcome.stopped:
                step.skip("stopped on request")
                return False
            if outcome.timed_out:
                raise JobFailed(
                    f"the agent timed out after {task.timeout_s:g} s",
                    result=run.result(worktree=str(run.wt.path)),
                )
            if not outcome.ok:
                raise JobFailed(
                    f"the agent failed: {outcome.error or outcome.summary or outcome.exit_code}",
                    result=run.result(worktree=str(run.wt.path)),
                )
        return True

    async def _validate(
        self, ctx: JobContext, payload: AgentTaskPayload, run: _Run, attempt: int
    ) -> list[GateFailure]:
        changes = await self.worktrees.changed_paths(run.wt)
        run.changed = sorted({c.path for c in changes})
        results = await run_gates(
            ctx,
            run.config.mandatory_gates(run.job_type),
            config=run.config,
            worktree=run.wt.path,
            changes=changes,
            claims=payload.claims,
            mode=_mode(payload, run),
            attempt=attempt,
        )
        run.gates = results
        return [
            GateFailure(r.gate, r.summary, r.output, r.exit_code) for r in results if not r.passed
        ]

    async def _land(
        self, ctx: JobContext, payload: AgentTaskPayload, run: _Run, step: StepHandle
    ) -> dict[str, Any]:
        """Commit, then integrate per the merge policy; rebased work passes its gates again
        before it lands."""
        wt = run.wt
        ref = payload.issue_ref or ctx.job.issue_ref
        subject = (payload.prompt.strip().splitlines() or ["agent task"])[0][:72]
        message = f"{subject}\n\nstitchwork-job: {ctx.job.id}" + (f"\nissue: {ref}" if ref else "")
        commit = await self.worktrees.commit(wt, message)
        if commit is None:
            await step.output("nothing changed: nothing to merge\n")
            return {"commit": None, "merged": False}
        await step.output(f"committed {commit[:12]} on {wt.branch}\n")
        strategy = run.config.merge.strategy
        merge_message = f"Merge {wt.branch}: {subject}\n\nstitchwork-job: {ctx.job.id}"
        try:
            for _ in range(REBASE_ROUNDS):
                if strategy is MergeStrategy.REBASE:
                    await self._rebase_onto_target(ctx, payload, run, step)
                try:
                    merged = await integrate(
                        wt.repo,
                        wt,
                        target_branch=run.target,
                        strategy=strategy.value,
                        message=merge_message,
                        lock_dir=self.lock_dir,
                        # Rebased work lands exactly as its gates saw it, or not at all.
                        fast_forward_only=strategy is MergeStrategy.REBASE,
                    )
                    break
                except TargetMoved:
                    continue  # moved again while the gates ran: rebase and check again
            else:
                raise JobFailed(f"{run.target} kept moving; gave up after {REBASE_ROUNDS} rebases")
        except MergeConflict as exc:
            raise JobFailed(
                f"merge conflict on {', '.join(exc.paths)}",
                result=run.result(worktree=str(wt.path), conflicts=list(exc.paths)),
                retryable=False,
            ) from exc
        except Conflict as exc:  # e.g. the target is checked out in the user's checkout
            raise JobFailed(str(exc), result=run.result(worktree=str(wt.path))) from exc
        await step.output(
            f"{merged.strategy.value}: {run.target} is now {merged.commit[:12]}"
            + (" (the target had moved)" if merged.target_moved else "")
            + "\n"
        )
        return {"commit": merged.commit, "merged": strategy is not MergeStrategy.BRANCH_ONLY}

    async def _rebase_onto_target(
        self, ctx: JobContext, payload: AgentTaskPayload, run: _Run, step: StepHandle
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
        run.wt = wt = await self.worktrees.rebased(wt, head)
        failures = await self._validate(ctx, payload, run, run.attempts)
        if failures:
            raise JobFailed(
                "gates failed after rebasing onto the moved target: "
                + ", ".join(f.gate for f in failures),
                result=run.result(worktree=str(wt.path)),
                retryable=False,
            )

    async def _cleanup(self, ctx: JobContext, run: _Run, outcome: str) -> None:
        """Keep a failed task's worktree; remove the others (and the branch, unless it is
        the only place the work lives: branch-only)."""
        try:
            async with ctx.step("clean up worktree", phase=StepPhase.CLEANUP) as step:
                await step.output(await self._tidy(run, outcome))
        except JobLost:  # cancelled: there is no step to record, but the worktree must go
            await self._tidy(run, outcome)
        except Exception:  # the job's own outcome matters more than its cleanup's
            ctx.log.exception("worktree_cleanup_failed", worktree=str(run.wt.path))

    async def _tidy(self, run: _Run, outcome: str) -> str:
        if outcome == "failed":
            await self.worktrees.keep(run.wt)
            return f"kept for inspection: {run.wt.path}\n"
        if run.wt.path.exists():
            keep_branch = (  # branch-only: the branch is the only place the work lives
                outcome == "completed"
                and run.job_type in MERGING_JOB_TYPES
                and not run.config.merge.integrates
            )
            await self.worktrees.remove(run.wt, delete_branch=not keep_branch)
        return f"removed {run.wt.path}\n"


def _mode(payload: AgentTaskPayload, run: _Run) -> LockMode:
    """A review, or a profile that may not write, is read-only whatever the task says."""
    if run.job_type not in MERGING_JOB_TYPES:
        return LockMode.READ
    return payload.mode if grants(run.profile.capabilities, REPO_WRITE) else LockMode.READ
