"""Settings: built once (from ``STITCHWORK_*`` environment variables) and passed down."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

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
    "reconcile_interval",
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
    queue_url: str = Field(
        default="sql://",
        description="sql:// (the job table) or redis://host:port/db (BullMQ queues on Redis)",
    )
    bus_url: str = Field(
        default="",
        description=(
            "how events reach other processes: '' or db:// (each API process tails the "
            "database), redis://host:port/db (pub/sub) or postgresql://... (LISTEN/NOTIFY)"
        ),
    )
    bullmq_prefix: str = Field(
        default="bull",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Redis key prefix of the BullMQ queues (BullMQ's own default)",
    )
    bullmq_queue_prefix: str = Field(
        default="stitchwork.",
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="BullMQ queue name = this + the stitchwork queue name",
    )
    reconcile_interval: timedelta = Field(
        default=timedelta(seconds=2),
        description="how often the broker is checked against the database (queued jobs it lost)",
    )

    api_url: str = Field(default="", description="where CLI commands reach the API")
    api_key: str = Field(default="", repr=False, description="key CLI commands send")
    log_level: str = "info"

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    worker_concurrency: int = Field(default=4, ge=1, le=1024)
    # A killed worker's jobs run again within lease + sweep_interval (about 7 s by default).
    lease: timedelta = timedelta(seconds=6)
    heartbeat_interval: timedelta = timedelta(seconds=2)
    sweep_interval: timedelta = timedelta(seconds=1)
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

    # Confinement (docs/security.md).
    sandbox: Literal["auto", "off"] = Field(
        default="auto",
        description=(
            "auto: every command a job starts runs under bubblewrap, and jobs are refused "
            "when it cannot; off: no sandbox (logged at start, shown by /api/v1/health)"
        ),
    )
    repo_roots: list[Path] = Field(
        default_factory=lambda: [Path.home()],
        description=(
            "directories repositories (agent tasks' repo, shell jobs' cwd) must be inside; "
            "JSON list"
        ),
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description=(
            "server environment variables every job's commands get (never STITCHWORK_*); JSON list"
        ),
    )

    # Chat (docs/chat.md). JSON-valued settings are JSON in the environment.
    chat_bot_name: str = Field(
        default="stitch",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="the name people mention the bot by: @<name> fix #42",
    )
    chat_users: dict[str, dict[str, str | list[str]]] = Field(
        default_factory=dict,
        description=(
            'who may do what: "<platform>:<user id>", "<platform>:role:<role>" or '
            '"<platform>:*" -> {"workspace": "default", "actions": ["fix", "status"] or "*"}; '
            "anyone else is politely refused"
        ),
    )
    chat_repos: dict[str, str] = Field(
        default_factory=dict,
        description='repository name -> absolute path of its checkout: {"acme/app": "/src/app"}',
    )
    chat_channel_repos: dict[str, str] = Field(
        default_factory=dict,
        description='channel id -> the repository name "#42" means there ("*": any other channel)',
    )
    chat_routes: dict[str, str] = Field(
        default_factory=dict,
        description="job type -> channel id the herald posts its milestones to",
    )
    chat_default_channel: str | None = Field(
        default=None, description="where milestones of job types not in chat_routes go"
    )
    chat_rate_messages: int = Field(
        default=5, ge=1, le=1000, description="chat messages per channel or thread per window"
    )
    chat_rate_window_s: float = Field(
        default=5.0, gt=0, le=3600, description="the window of chat_rate_messages, in seconds"
    )
    chat_command_rate: int = Field(
        default=10, ge=1, le=10_000, description="commands one chat user may send per minute"
    )
    slack_signing_secret: str = Field(
        default="", repr=False, description="Slack app signing secret (verifies slash commands)"
    )
    mattermost_token: str = Field(
        default="", repr=False, description="Mattermost slash-command or outgoing-webhook token"
    )
    slack_webhook_url: str = Field(
        default="", repr=False, description="incoming-webhook URL replies and status go to"
    )
    discord_token: str = Field(default="", repr=False, description="Discord bot token")
    discord_guild_id: int | None = Field(default=None, description="the Discord server (guild)")
    discord_channel_id: int | None = Field(
        default=None, description="the Discord control channel the bot listens in"
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
        "reconcile_interval",
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

    @field_validator("repo_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        if not roots:
            raise ValueError("give at least one directory (no job could name a repository)")
        for root in roots:
            if not root.is_absolute():
                raise ValueError(f"{str(root)[:200]!r} is not an absolute path")
        return [Path(os.path.normpath(root)) for root in roots]

    @field_validator("pass_env")
    @classmethod
    def _pass_env_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name[:64]!r} is not an environment variable name")
            if name.startswith("STITCHWORK_"):
                raise ValueError(f"{name} is the server's own setting: it never reaches a job")
        return names

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
