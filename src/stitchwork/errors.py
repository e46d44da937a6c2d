"""One exception tree for the whole package.

The API maps these to HTTP status codes in ``api/errors.py``; services never raise HTTP errors.
Errors carry structured fields so callers can react without parsing messages.
"""

from __future__ import annotations

from typing import Any


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


class Unauthorized(StitchworkError):
    title = "Unauthorized"


class Forbidden(StitchworkError):
    title = "Forbidden"


class BackendUnavailable(StitchworkError):
    title = "Backend unavailable"


class ConfigError(InvalidRequest):
    title = "Invalid configuration"
