"""One exception tree for the whole package.

The API maps these to HTTP status codes in ``api/errors.py``; services never raise HTTP errors.
Errors carry structured fields so callers can react without parsing messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the domain imports this module, so the type is for annotations only
    from stitchwork.domain.guards import GuardDecision


class StitchworkError(Exception):
    """Base of every error stitchwork raises on purpose."""

    title = "stitchwork error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class NotFound(StitchworkError):
    title = "Not found"


class Conflict(StitchworkError):
    title = "Conflict"


class InvalidTransition(Conflict):
    """A state change the state machine does not allow (or that lost a compare-and-set race)."""

    title = "Invalid transition"

    def __init__(
        self, entity_id: object, from_: str, to: str, *, reason: str | None = None
    ) -> None:
        message = f"cannot move {entity_id} from {from_!r} to {to!r}"
        if reason:
            message = f"{message}: {reason}"
        super().__init__(message, entity_id=str(entity_id), from_status=from_, to_status=to)
        self.entity_id = entity_id
        self.from_ = from_
        self.to = to


class TargetMoved(Conflict):
    """A fast-forward-only integration found the target past the job branch's base: the
    caller rebases, runs the gates again and retries."""

    title = "Target branch moved"


class MergeConflict(Conflict):
    """Integrating a job branch into its target conflicts; ``paths`` lists the conflicting files.

    The job branch is left as it was, so the conflict can be inspected or resolved by hand.
    """

    title = "Merge conflict"

    def __init__(self, branch: str, target: str, paths: list[str], *, strategy: str) -> None:
        shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
        super().__init__(
            f"{strategy} of {branch} into {target} conflicts in {shown or 'unknown paths'}",
            branch=branch,
            target=target,
            paths=paths,
            strategy=strategy,
        )
        self.branch = branch
        self.target = target
        self.paths = paths
        self.strategy = strategy


class GitError(StitchworkError):
    """A ``git`` command failed; carries the command, its exit code and the tail of stderr."""

    title = "Git command failed"

    def __init__(self, command: list[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip() or "no error output"
        super().__init__(
            f"`git {' '.join(command)}` failed with exit code {returncode}: {detail}",
            command=command,
            returncode=returncode,
            stderr=stderr,
        )
        self.command = command
        self.returncode = returncode
        self.stderr = stderr


class InvalidRequest(StitchworkError):
    title = "Invalid request"

    def __init__(self, message: str, *, field: str | None = None, **fields: Any) -> None:
        super().__init__(message, field=field, **fields)
        self.field = field


class InvalidClaim(InvalidRequest):
    """A resource claim that is not a safe repo-relative path or glob."""

    title = "Invalid claim"

    def __init__(self, claim: str, reason: str) -> None:
        super().__init__(f"invalid claim {claim!r}: {reason}", field="claims", claim=claim)
        self.claim = claim
        self.reason = reason


class CycleError(InvalidRequest):
    """A plan whose dependencies form a cycle; ``cycle`` lists it, first node repeated last."""

    title = "Dependency cycle"

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(
            f"plan has a dependency cycle: {' -> '.join(cycle)}", field="edges", cycle=cycle
        )
        self.cycle = cycle


class CommandSyntaxError(InvalidRequest):
    """A chat command the grammar does not accept: ``message`` says what is wrong and
    ``example`` is a correct command of the kind intended (``@stitch fix #42``)."""

    title = "Invalid chat command"

    def __init__(self, message: str, example: str) -> None:
        stop = "" if message.endswith((".", "?", "!")) else "."
        super().__init__(
            f"{message}{stop} For example: {example}", field="command", example=example
        )
        self.message = message
        self.example = example


class InvalidRepoConfig(InvalidRequest):
    """A ``stitchwork.toml`` that cannot be used.

    ``source`` names the file, ``key`` the dotted path of the bad entry (``gates.lint.timeout``;
    ``None`` for the file as a whole) and ``problem`` what is wrong and the right form.
    ``line``/``column`` are set for TOML syntax errors.
    """

    title = "Invalid repository configuration"

    def __init__(
        self,
        source: str,
        key: str | None,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(
            f"{where}: {problem}", field=key, source=source, key=key, line=line, column=column
        )
        self.source = source
        self.key = key
        self.problem = problem
        self.line = line
        self.column = column


class Unauthorized(StitchworkError):
    title = "Unauthorized"


class Forbidden(StitchworkError):
    title = "Forbidden"


class GuardRailDenied(Forbidden):
    """A dispatch the guard rails refused: the agent profile may not run the job type."""

    title = "Guard rail denied"

    def __init__(self, decision: GuardDecision) -> None:
        if decision.allowed:
            raise ValueError("an allowed guard decision is not a denial")
        super().__init__(
            decision.reason,
            allowed=decision.allowed,
            reason=decision.reason,
            required_capability=decision.required_capability,
        )
        self.decision = decision


class BackendUnavailable(StitchworkError):
    title = "Backend unavailable"


class ConfigError(InvalidRequest):
    title = "Invalid configuration"
