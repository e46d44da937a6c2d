"""The catalogue of job types a workspace may submit, with each type's payload schema.

Submission validates against it, so an unknown type or a malformed payload is refused with a
field-level message before anything is stored. Handlers (what runs a type) live in ``runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stitchwork.domain.claims import normalize_claim
from stitchwork.domain.guards import AGENT_REVIEW, AGENT_TASK
from stitchwork.domain.locks import LockMode
from stitchwork.domain.scripts import parse_script
from stitchwork.errors import InvalidClaim, InvalidRequest
from stitchwork.runner.sandbox import check_env_names


class NoopPayload(BaseModel):
    """Does nothing and completes at once (benchmarks, smoke tests)."""

    model_config = ConfigDict(extra="allow")


class SleepPayload(BaseModel):
    """Waits, reporting progress; can be told to fail its first attempts (tests, demos)."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=86_400)
    progress_steps: int = Field(default=0, ge=0, le=100)
    fail_attempts: int = Field(default=0, ge=0, le=100)


class ShellPayload(BaseModel):
    """Runs a command. A string goes through ``/bin/sh -c``; a list is executed directly.

    A line ``::progress::NN`` on the command's output reports NN percent progress.
    """

    model_config = ConfigDict(extra="forbid")

    command: str | list[str]
    timeout_s: float = Field(default=600, gt=0, le=86_400)
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    output_tail_chars: int = Field(default=4000, ge=0, le=1_000_000)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        problems = check_env_names(value, "env")
        if problems:
            raise ValueError("; ".join(problems[:3]))
        return value

    @field_validator("command")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        if (isinstance(value, str) and not value.strip()) or (
            isinstance(value, list) and (not value or not all(value))
        ):
            raise ValueError("must be a non-empty command")
        return value


class EmitPayload(BaseModel):
    """Writes exactly ``count`` numbered output events (ordering tests, fan-out benchmark)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=100, ge=1, le=1_000_000)
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000)
    batch: int = Field(default=100, ge=1, le=1000)
    prefix: str = Field(default="event ", max_length=100)


class AgentTaskPayload(BaseModel):
    """A coding agent's task on a git repository: run in its own worktree, proven by the
    repository's mandatory gates, confined to its claims, then merged (``runner``)."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=4096)
    prompt: str = Field(default="", max_length=200_000)
    profile: str | None = Field(default=None, min_length=1, max_length=100)
    claims: list[str] = Field(default_factory=list, max_length=1000)
    mode: LockMode = LockMode.WRITE
    target_branch: str | None = Field(default=None, min_length=1, max_length=255)
    issue_ref: str | None = Field(default=None, max_length=500)
    # The script agent's actions (``stitchwork.domain.scripts``), checked on submission.
    script: list[Any] | None = None
    on_attempt: dict[str, list[Any]] | None = None

    @field_validator("repo")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not Path(value).is_absolute():
            raise ValueError("must be the repository's absolute path")
        return value

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: list[str]) -> list[str]:
        try:
            return [normalize_claim(c) for c in value]
        except InvalidClaim as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _script(self) -> AgentTaskPayload:
        if self.script is None and self.on_attempt is None:
            return self
        data = {"script": self.script or [], "on_attempt": self.on_attempt or {}}
        for attempt in {1, *(int(k) for k in data["on_attempt"] if k.isdigit())}:
            try:
                parse_script(data, attempt)
            except InvalidRequest as exc:
                raise ValueError(exc.message) from None
        return self


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    payload_model: type[BaseModel]
    description: str


BUILTIN_JOB_TYPES = (
    JobType("shell", ShellPayload, "run a command with a timeout; captures exit code and output"),
    JobType("noop", NoopPayload, "complete at once (benchmarks)"),
    JobType("sleep", SleepPayload, "wait, reporting progress (tests and demos)"),
    JobType("emit", EmitPayload, "write numbered output events (tests and benchmarks)"),
    JobType(
        AGENT_TASK,
        AgentTaskPayload,
        "run a coding agent in its own worktree, prove it with gates, merge it",
    ),
    JobType(
        AGENT_REVIEW,
        AgentTaskPayload,
        "run a read-only agent (review, analysis) in its own worktree; any change fails it",
    ),
)


class JobTypeCatalog:
    def __init__(self, types: tuple[JobType, ...] = BUILTIN_JOB_TYPES) -> None:
        self._types = {t.name: t for t in types}

    @property
    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def validate(self, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload, normalised by the type's schema; ``InvalidRequest`` names the field."""
        job_type = self._types.get(type_)
        if job_type is None:
            raise InvalidRequest(
                f"unknown job type {type_!r}; known types: {', '.join(self.names)}", field="type"
            )
        try:
            model = job_type.payload_model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            # Union errors carry the member's type name in loc ('command', 'str'): drop it.
            path = [str(p) for p in first["loc"] if not _is_type_tag(p)]
            where = ".".join(["payload", *path])
            raise InvalidRequest(f"{where}: {first['msg']}", field=where) from exc
        return model.model_dump(mode="json", exclude_unset=True)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (
        "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}
    )
