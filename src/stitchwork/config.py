"""Settings: built once (from ``STITCHWORK_*`` environment variables) and passed down."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import platformdirs
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8420
DURATION_FIELDS = (
    "lease",
    "heartbeat_interval",
    "sweep_interval",
    "poll_interval",
    "shutdown_grace",
    "cancel_grace",
    "backoff_base",
    "backoff_max",
    "sse_ping_interval",
    "event_tail_interval",
    "ws_auth_timeout",
    "scheduler_interval",
    "starvation_after",
    "pull_lease",
    "stall_after",
)


def default_data_dir() -> Path:
    return platformdirs.user_data_path("stitchwork", appauthor=False)


class Settings(BaseSettings):
    """Every tunable of stitchwork. Durations accept seconds (``30``) or ISO 8601 (``PT30S``)."""

    model_config = SettingsConfigDict(env_prefix="STITCHWORK_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    work_dir: Path | None = Field(
        default=None,
        description="agent tasks' worktrees and merge locks (default <data_dir>/work)",
    )
    database_url: str = ""
    queue_url: str = "sql://"

    api_url: str = Field(default="", description="where CLI commands reach the API")
    api_key: str = Field(default="", repr=False, description="key CLI commands send")
    log_level: str = "info"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    worker_concurrency: int = Field(default=4, ge=1, le=1024)
    lease: timedelta = timedelta(seconds=30)
    heartbeat_interval: timedelta = timedelta(seconds=10)
    sweep_interval: timedelta = timedelta(seconds=5)
    poll_interval: timedelta = timedelta(seconds=1)
    shutdown_grace: timedelta = timedelta(seconds=30)
    cancel_grace: timedelta = timedelta(seconds=5)

    sse_ping_interval: timedelta = timedelta(seconds=15)
    event_tail_interval: timedelta = Field(
        default=timedelta(seconds=1),
        description="how often an API process reads events committed by other processes",
    )
    subscriber_buffer: int = Field(
        default=10_000,
        ge=10,
        description="events buffered per live subscriber before it is dropped",
    )
    ws_auth_timeout: timedelta = timedelta(seconds=10)

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base: timedelta = timedelta(seconds=1)
    backoff_max: timedelta = timedelta(minutes=5)
    backoff_jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    scheduler_interval: timedelta = Field(
        default=timedelta(seconds=1),
        description="how often running executions are checked besides event wake-ups",
    )
    starvation_after: timedelta = Field(
        default=timedelta(seconds=30),
        description="a ready node blocked by locks this long gets them at their next release",
    )
    pull_lease: timedelta = Field(
        default=timedelta(minutes=10),
        description="how long a pull-mode orchestrator may hold a node before it fails",
    )
    stall_after: timedelta = Field(
        default=timedelta(minutes=5),
        description="a running execution with no event for this long is reported as stalled",
    )

    queue_routes: dict[str, str] = Field(
        default_factory=dict,
        description="job type -> queue name; types not listed go to the 'default' queue",
    )

    @field_validator(*DURATION_FIELDS, mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        # Environment variables arrive as text: "2.5" means seconds, like a bare number does.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    @field_validator(
        "lease",
        "heartbeat_interval",
        "sweep_interval",
        "poll_interval",
        "sse_ping_interval",
        "event_tail_interval",
        "ws_auth_timeout",
        "scheduler_interval",
        "starvation_after",
        "pull_lease",
        "stall_after",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value

    @field_validator("shutdown_grace", "cancel_grace", "backoff_base", "backoff_max")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.heartbeat_interval >= self.lease:
            raise ValueError(
                f"heartbeat_interval ({self.heartbeat_interval.total_seconds()}s) must be shorter "
                f"than lease ({self.lease.total_seconds()}s), or leases expire between heartbeats"
            )
        if not self.database_url:
            db = self.data_dir / "stitchwork.db"
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{db}")
        return self

    @property
    def agent_work_dir(self) -> Path:
        """Where agent tasks' worktrees and merge locks live; outside every checkout."""
        return self.work_dir or self.data_dir / "work"

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"

    def queue_for(self, job_type: str) -> str:
        return self.queue_routes.get(job_type, "default")
