"""The ``agent-task`` job type: a coding agent's task, from worktree to merge.

SETUP creates the task's worktree on ``stitchwork/<job-id>`` from the target branch (or finds
the one an earlier attempt left and resets it to its branch head) and reads the repository's
``stitchwork.toml`` from there (the committed config of the target branch, which the agent
cannot weaken). EXECUTION runs the agent (an ``ai_action`` step). VALIDATION runs every
mandatory gate; when one fails, the agent runs again in the same worktree with a continuation
prompt listing every failure, up to ``max_gate_attempts``. CLEANUP commits (with the
``Stitchwork-Job`` trailer) and integrates under the repository's merge lock (``landing``), and
removes the worktree; a failed task keeps it for inspection (its path is in the job's result) until
``stitchwork gc``.

Every attempt can land at most once and never loses a commit, whatever crashed before it (the
recovery rule of each step is in ``docs/agents.md``): an attempt first looks for the job's
trailer on the target (then the job completes with that commit), then gates the commits an
earlier attempt left on the branch (and lands them if they pass, without running the agent
again), and only then runs the agent. A branch is deleted only when its commits are on the
target.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitchwork.domain.continuation import GateFailure, continuation_prompt, prior_work_prompt
from stitchwork.domain.events import EventType
from stitchwork.domain.guards import MERGING_JOB_TYPES, REPO_WRITE, grants
from stitchwork.domain.locks import LockMode
from stitchwork.domain.repo_config import AgentProfile, GateConfig, RepoConfig
from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.errors import Forbidden, GitError, InvalidRequest
from stitchwork.runner.adapters import adapter_for
from stitchwork.runner.agents import AgentTask
from stitchwork.runner.gates import GateResult, run_gates
from stitchwork.runner.git import common_git_dir
from stitchwork.runner.landing import Lander
from stitchwork.runner.sandbox import (
    Confinement,
    JobConfinement,
    Sandbox,
    SandboxMode,
    SandboxUnavailable,
)
from stitchwork.runner.trailers import commits_between, find_landed
from stitchwork.runner.worktrees import Worktree, Worktrees
from stitchwork.runtime.context import JobContext, JobFailed, StepHandle
from stitchwork.services.agent_tasks import (
    allowed_profile,
    check_agent_task,
    read_repo_config,
)
from stitchwork.services.job_types import AgentTaskPayload
from stitchwork.storage.steps import JobLost


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
    prior: list[tuple[str, str]] = field(default_factory=list)  # commits of earlier attempts
    git_dir: Path = Path()  # the repository's .git: readable in the sandbox, never writable

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
        confinement: the sandbox, environment and repository roots of every command a task
            starts (default: unconfined, which only tests that need no sandbox use).
    """

    def __init__(
        self,
        work_root: Path,
        lock_dir: Path,
        *,
        grace_s: float = 2.0,
        confinement: JobConfinement | None = None,
    ) -> None:
        self.worktrees = Worktrees(work_root)
        self.lock_dir = lock_dir
        self.lander = Lander(self.worktrees, lock_dir)
        self.grace_s = grace_s
        self.confinement = confinement or JobConfinement(Sandbox(SandboxMode.OFF))

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
                if self.confinement.repo_roots:
                    self.confinement.inside_roots(payload.repo, field="payload.repo")
                self.confinement.sandbox.check()
                checkout_config, _ = check_agent_task(
                    payload.model_dump(), ctx.job.agent_profile, job_type=ctx.job.type
                )
                target = payload.target_branch or checkout_config.merge.target_branch
                wt = await self.worktrees.create(repo, str(ctx.job.id), target_branch=target)
            except (InvalidRequest, Forbidden, GitError, SandboxUnavailable) as exc:
                raise JobFailed(str(exc), retryable=False) from exc
            git_dir = await common_git_dir(wt.path)
            # A retry starts from a known state: the branch head, never a dirty leftover.
            if await self.worktrees.reset(wt):
                await step.output(
                    "an earlier attempt left uncommitted work or an unfinished rebase: "
                    "dropped it, the worktree is at its branch head\n"
                )
            prior = await commits_between(wt.repo, wt.base_commit, await self.worktrees.head(wt))
            # The gates, rails and profiles that count are the target branch's committed ones.
            try:
                config = read_repo_config(wt.path)
                profile = allowed_profile(
                    config, payload.profile or ctx.job.agent_profile, ctx.job.type
                )
            except (InvalidRequest, Forbidden) as exc:  # GuardRailDenied is a Forbidden
                await self.worktrees.remove(wt, delete_branch=True)
                raise JobFailed(str(exc), retryable=False) from exc
            await step.output(
                f"worktree {wt.path}\nbranch {wt.branch} from {target} at {wt.base_commit[:12]}\n"
                f"profile {profile.name}; "
                f"gates: {', '.join(config.mandatory_gates(ctx.job.type))}\n"
                + (
                    f"{len(prior)} commit(s) from an earlier attempt on the branch\n"
                    if prior
                    else ""
                )
            )
        return _Run(wt, config, profile, target, ctx.job.type, git_dir=git_dir, prior=prior)

    async def _work(self, ctx: JobContext, payload: AgentTaskPayload, run: _Run) -> dict[str, Any]:
        merging = run.job_type in MERGING_JOB_TYPES
        if merging:
            landed = await find_landed(
                run.wt.repo, run.target, str(ctx.job.id), since=ctx.job.created_at
            )
            if landed is not None:  # an earlier attempt landed it, then died: never again
                async with ctx.step("commit and merge", phase=StepPhase.CLEANUP) as step:
                    await step.output(
                        f"{run.target} already holds this job's change as {landed[:12]} (its "
                        "Stitchwork-Job trailer): an earlier attempt landed it; not merging again\n"
                    )
                return run.result(commit=landed, merged=run.config.merge.integrates, recovered=True)
            if ctx.job.attempt > 1:
                # An earlier attempt may have begun landing: the target says it did not land,
                # so this job may be cancelled again until this attempt lands.
                await ctx.end_landing()
        recovery = ctx.job.attempt > ctx.job.max_attempts
        prompt = payload.prompt
        if run.prior:
            # Commits an earlier attempt made: they land if they pass their gates, without
            # running the agent again (which would apply its change twice).
            failures = await self._validate(ctx, payload, run, 0, label="earlier commits")
            if not failures and merging:
                return await self._commit_and_land(ctx, payload, run)
            if not failures:
                return run.result(merged=False, summary=run.summary)
            if recovery:
                raise _unlanded(run, "its branch's commits fail their gates")
            prompt = prior_work_prompt(
                payload.prompt, run.prior, [_failure(r) for r in run.gates if not r.passed]
            )
        elif recovery:
            raise _unlanded(run, "its branch holds no commit to land")
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
        if not merging:  # a review: its output is the result
            return run.result(merged=False, summary=run.summary)
        return await self._commit_and_land(ctx, payload, run)

    async def _commit_and_land(
        self, ctx: JobContext, payload: AgentTaskPayload, run: _Run
    ) -> dict[str, Any]:
        async def revalidate() -> list[GateFailure]:  # after a rebase onto a moved target
            return await self._validate(ctx, payload, run, run.attempts)

        async with ctx.step("commit and merge", phase=StepPhase.CLEANUP) as step:
            landed = await self.lander.land(
                ctx,
                run,
                step,
                prompt=payload.prompt,
                issue_ref=payload.issue_ref or ctx.job.issue_ref,
                revalidate=revalidate,
            )
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
            env=self.confinement.env(profile.env, profile.pass_env),
            confine=functools.partial(self._confine_agent, run),
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

    def _confine_agent(
        self, run: _Run, readable: tuple[Path, ...]
    ) -> Callable[[list[str]], list[str]] | None:
        """The agent's sandbox: its worktree (and the profile's write paths) writable, the
        repository's ``.git`` (and the profile's read paths) readable, nothing else."""
        profile = run.profile
        confinement = Confinement(
            writable=(run.wt.path, *map(Path, profile.write_paths)),
            readonly=(run.git_dir, *map(Path, profile.read_paths), *readable),
            network=profile.network,
        )
        return self.confinement.wrapper(confinement, run.wt.path)

    def _confine_gate(
        self, run: _Run, gate: GateConfig
    ) -> tuple[dict[str, str], Callable[[list[str]], list[str]] | None]:
        """A gate runs the agent's code: the same walls as the agent, its own variables."""
        confinement = Confinement(
            writable=(run.wt.path,),
            readonly=(run.git_dir, *map(Path, gate.read_paths)),
            network=gate.network,
        )
        env = self.confinement.env(gate.env, gate.pass_env)
        return env, self.confinement.wrapper(confinement, run.wt.path)

    async def _validate(
        self,
        ctx: JobContext,
        payload: AgentTaskPayload,
        run: _Run,
        attempt: int,
        *,
        label: str | None = None,
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
            label=label,
            claims_root=run.wt.repo,  # the tree the scheduler's locks were decided on
            confine=functools.partial(self._confine_gate, run),
        )
        run.gates = results
        return [_failure(r) for r in results if not r.passed]

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
        if not run.wt.path.exists():
            return f"removed {run.wt.path}\n"
        # The branch goes only when another branch holds its commits: a branch-only result,
        # or the commits of a stopped task, are nowhere else.
        if await self.worktrees.remove(run.wt, delete_branch=True):
            return f"removed {run.wt.path} and {run.wt.branch}\n"
        return (
            f"removed {run.wt.path}; kept {run.wt.branch}, whose commits are on no other branch\n"
        )


def _unlanded(run: _Run, why: str) -> JobFailed:
    """A recovery attempt (after the attempts ran out while one was landing) that finds the
    change neither on the target nor landable: the job fails, and says so."""
    return JobFailed(
        f"recovery after a crash while landing: {run.target} does not hold this job's "
        f"change and {why}; its commits, if any, stay on {run.wt.branch}",
        result=run.result(worktree=str(run.wt.path)),
        retryable=False,
    )


def _failure(result: GateResult) -> GateFailure:
    return GateFailure(result.gate, result.summary, result.output, result.exit_code)


def _mode(payload: AgentTaskPayload, run: _Run) -> LockMode:
    """A review, or a profile that may not write, is read-only whatever the task says."""
    if run.job_type not in MERGING_JOB_TYPES:
        return LockMode.READ
    return payload.mode if grants(run.profile.capabilities, REPO_WRITE) else LockMode.READ
