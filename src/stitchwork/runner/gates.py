"""Quality rails: the mandatory gates of one attempt, each a tracked ``gate`` step.

Gates of an attempt run in parallel, at most ``gate_parallelism`` at a time. Each emits
``gate.started`` and then ``gate.passed`` or ``gate.failed`` with its exit code, a summary and
the coverage when the gate measures it. The built-in ``claims`` gate fails when the agent
changed a path its claims do not cover (added, modified, deleted, or either side of a rename),
or changed anything at all in a read-only task; it uses the same coverage rule as lock
decisions, so the two can never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stitchwork.domain.claims import covers
from stitchwork.domain.coverage import UnreadableCoverageReport, parse_coverage
from stitchwork.domain.events import EventType
from stitchwork.domain.locks import LockMode
from stitchwork.domain.repo_config import CLAIMS_GATE, GateConfig, RepoConfig
from stitchwork.domain.steps import StepPhase, StepType
from stitchwork.runner.failpoints import failpoint
from stitchwork.runner.git import PathChange
from stitchwork.runner.process import ProcessStartError, run_process
from stitchwork.runner.sandbox import clean_env
from stitchwork.runtime.context import JobContext, StepHandle

OUTPUT_TAIL_CHARS = 8000
# A gate's complete environment and the ``wrap`` that starts it in the task's sandbox.
ConfineGate = Callable[[GateConfig], tuple[dict[str, str], Callable[[list[str]], list[str]] | None]]
MAX_LISTED_PATHS = 20


@dataclass(frozen=True, slots=True)
class GateResult:
    """How one gate ended on one attempt."""

    gate: str
    passed: bool
    summary: str
    exit_code: int | None = None
    coverage: float | None = None
    output: str = ""

    def payload(self) -> dict[str, Any]:
        """The ``gate.passed``/``gate.failed`` payload and the job result's entry."""
        data: dict[str, Any] = {"gate": self.gate, "passed": self.passed, "summary": self.summary}
        if self.exit_code is not None:
            data["exit_code"] = self.exit_code
        if self.coverage is not None:
            data["coverage"] = round(self.coverage, 2)
        return data


class _GateFailed(Exception):
    """Ends a gate's step as failed (the result is kept by the caller)."""


async def run_gates(
    ctx: JobContext,
    names: Sequence[str],
    *,
    config: RepoConfig,
    worktree: Path,
    changes: Sequence[PathChange],
    claims: Sequence[str],
    mode: LockMode,
    attempt: int,
    label: str | None = None,
    claims_root: Path | None = None,
    confine: ConfineGate | None = None,
) -> list[GateResult]:
    """Run the gates ``names`` (in parallel, bounded) on ``worktree``; results in that order.

    ``changes`` are the paths the agent changed since the task's base commit, for the claims
    gate. Its literal claims are classified by the tree at ``claims_root`` (the repository's
    checkout, as the scheduler's locks are), never by the worktree the agent may have
    reshaped: a directory the agent creates under a file claim does not widen the claim. A
    gate that cannot run (its command is missing) fails; it is never skipped. Each gate's
    step is named ``gate <name> (attempt <attempt>)``, or ``(<label>)`` with a label.
    ``confine`` gives each command gate its environment and sandbox (default: a clean
    environment, no sandbox).
    """
    limit = asyncio.Semaphore(config.gate_parallelism)

    async def one(name: str) -> GateResult:
        async with limit:
            return await _tracked_gate(
                ctx,
                name,
                config,
                worktree,
                changes,
                claims,
                mode,
                attempt=attempt,
                label=label,
                claims_root=claims_root,
                confine=confine,
            )

    return list(await asyncio.gather(*(one(name) for name in names)))


async def _tracked_gate(
    ctx: JobContext,
    name: str,
    config: RepoConfig,
    worktree: Path,
    changes: Sequence[PathChange],
    claims: Sequence[str],
    mode: LockMode,
    *,
    attempt: int,
    label: str | None,
    claims_root: Path | None,
    confine: ConfineGate | None,
) -> GateResult:
    result: GateResult | None = None
    # Raising _GateFailed records the step as failed; the result itself says why.
    with contextlib.suppress(_GateFailed):
        async with ctx.step(
            f"gate {name} ({label or f'attempt {attempt}'})",
            phase=StepPhase.VALIDATION,
            type_=StepType.GATE,
        ) as step:
            await step.event(EventType.GATE_STARTED, {"gate": name, "attempt": attempt})
            failpoint("gate.started")
            if name == CLAIMS_GATE:
                result = claims_gate(changes, claims, mode, repo_root=claims_root)
                await step.output(result.output)
            else:
                result = await _command_gate(step, config.gates[name], worktree, confine)
            payload = {**result.payload(), "attempt": attempt}
            if result.passed:
                await step.event(EventType.GATE_PASSED, payload)
            else:
                await step.event(EventType.GATE_FAILED, payload)
                raise _GateFailed(result.summary)
    assert result is not None
    return result


async def _command_gate(
    step: StepHandle, gate: GateConfig, worktree: Path, confine: ConfineGate | None
) -> GateResult:
    if confine is not None:
        env, wrap = confine(gate)
    else:
        env, wrap = clean_env(gate.env, gate.pass_env, home=tempfile.gettempdir()), None
    try:
        run = await run_process(
            gate.command,
            cwd=worktree,
            env=env,
            on_output=step.output,
            timeout_s=gate.timeout.total_seconds(),
            tail_chars=OUTPUT_TAIL_CHARS,
            wrap=wrap,
        )
    except ProcessStartError as exc:
        return GateResult(gate.name, False, f"the gate command could not start: {exc}")
    if run.timed_out:
        return GateResult(
            gate.name,
            False,
            f"timed out after {gate.timeout.total_seconds():g} s",
            run.returncode,
            output=run.output_tail,
        )
    if run.returncode != 0:
        return GateResult(
            gate.name,
            False,
            f"exited with code {run.returncode}",
            run.returncode,
            output=run.output_tail,
        )
    if gate.coverage_min is None or gate.coverage_report is None:
        return GateResult(gate.name, True, "exited with code 0", 0, output=run.output_tail)
    report = worktree / gate.coverage_report
    try:
        coverage = parse_coverage(report.read_text("utf-8"), filename=gate.coverage_report)
    except (OSError, UnicodeDecodeError) as exc:
        summary = f"exited 0 but its coverage report {gate.coverage_report} is unreadable: {exc}"
        return GateResult(gate.name, False, summary, 0, output=run.output_tail)
    except UnreadableCoverageReport as exc:
        return GateResult(gate.name, False, str(exc), 0, output=run.output_tail)
    if coverage < gate.coverage_min:
        summary = f"coverage {coverage:.2f}% is below the minimum {gate.coverage_min:g}%"
        return GateResult(gate.name, False, summary, 0, coverage, run.output_tail)
    summary = f"exited with code 0; coverage {coverage:.2f}% (minimum {gate.coverage_min:g}%)"
    return GateResult(gate.name, True, summary, 0, coverage, run.output_tail)


def claims_gate(
    changes: Sequence[PathChange],
    claims: Sequence[str],
    mode: LockMode,
    *,
    repo_root: Path | None = None,
) -> GateResult:
    """The built-in claims gate over the paths a task changed.

    Every changed path (both sides of a rename) must be covered by one of the task's claims,
    and a ``read`` or ``analysis`` task may change nothing.
    """
    touched = sorted({p for c in changes for p in (c.path, c.old_path) if p is not None})
    if mode is not LockMode.WRITE and touched:
        outside = touched
        why = f"a {mode.value}-only task changed {len(touched)} path(s)"
    else:
        outside = [p for p in touched if not any(covers(c, p, repo_root=repo_root) for c in claims)]
        why = f"{len(outside)} changed path(s) outside the claims {list(claims)}"
    if not outside:
        summary = f"{len(touched)} changed path(s), all within the claims"
        return GateResult(CLAIMS_GATE, True, summary, output=summary + "\n")
    listed = outside[:MAX_LISTED_PATHS]
    more = len(outside) - len(listed)
    lines = [why + ":", *(f"  {p}" for p in listed)]
    if more:
        lines.append(f"  ... and {more} more")
    return GateResult(
        CLAIMS_GATE, False, f"{why}: {', '.join(listed)}", output="\n".join(lines) + "\n"
    )
