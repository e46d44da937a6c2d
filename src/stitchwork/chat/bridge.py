"""The chat bridge: a parsed chat command becomes a call to the same services as the API.

A provider hands every message addressed to the bot to ``ChatBridge.handle``. The bridge
parses it, checks the user's rate limit and grant (``chat.access``), calls ``JobService``
(guard rails included: a denial is answered, not raised) and answers in the message's thread,
or in its channel. Every answer is calm plain text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

import structlog

from stitchwork.chat.access import ChatAccess, CommandRateLimiter, Grant, user_key
from stitchwork.chat.base import ChatProvider, IncomingMessage
from stitchwork.clock import Clock, SystemClock
from stitchwork.config import Settings
from stitchwork.domain.chat_commands import (
    Action,
    Command,
    IssueRef,
    JobRef,
    help_text,
    parse_body,
    parse_command,
)
from stitchwork.domain.guards import AGENT_TASK
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.errors import (
    CommandSyntaxError,
    GuardRailDenied,
    InvalidTransition,
    NotFound,
    StitchworkError,
)
from stitchwork.services.auth import AuthService
from stitchwork.services.jobs import JobService

__all__ = ["ChatBridge", "HeraldControl"]

log = structlog.get_logger(__name__)

RECENT_JOBS = 10
_MAX_UUID = (1 << 128) - 1


class HeraldControl(Protocol):
    """What the bridge asks of the herald (``runtime.herald.Herald``)."""

    def verbose(self, job_id: UUID, on: bool) -> None: ...

    def quiet(self, job_id: UUID | None = None) -> None: ...


class _Answer(Exception):
    """Stop handling a command and say ``text`` instead."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class ChatBridge:
    """Maps chat commands to ``JobService`` calls for one provider.

    Providers whose every message is a command (the console, slash commands) set
    ``direct = True``: their text may omit the ``@<bot>`` mention. A provider may expose
    ``bot_ids`` (the bot's own user ids) so that ``<@123> fix #42`` is recognised.
    """

    def __init__(
        self,
        provider: ChatProvider,
        jobs: JobService,
        auth: AuthService,
        settings: Settings,
        *,
        herald: HeraldControl | None = None,
        access: ChatAccess | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.provider = provider
        self.jobs = jobs
        self.auth = auth
        self.settings = settings
        self.herald = herald
        self.bot_name = settings.chat_bot_name
        self.access = access if access is not None else ChatAccess(settings.chat_users)
        self.clock = clock or SystemClock()
        self.limiter = CommandRateLimiter(settings.chat_command_rate, self.clock)
        self._told_to_slow_down: set[str] = set()
        self._workspaces: dict[str, UUID] = {}
        self._workspace_lock = asyncio.Lock()  # two first commands must not both create it

    def attach(self) -> None:
        """Receive the provider's commands."""
        self.provider.on_command(self.handle)

    async def handle(self, message: IncomingMessage) -> None:
        """Answer one message; never raises (a failure is logged and answered calmly)."""
        try:
            command = self._parse(message)
        except CommandSyntaxError as exc:
            if await self._admitted(message):
                try:
                    self._grant(message, Action.HELP)
                    text = f"I did not understand that: {exc}"
                except _Answer as refusal:
                    text = refusal.text
                await self._reply(message, text)
            return
        if command is None or not await self._admitted(message):
            return
        try:
            text = await self._run(message, command)
        except _Answer as answer:
            text = answer.text
        except GuardRailDenied as exc:
            text = f"The guard rails do not allow that: {exc.decision.reason}"
        except StitchworkError as exc:
            text = f"That did not work: {exc.message}"
        except Exception:
            log.exception("chat_command_failed", user=user_key(message.user), text=message.text)
            text = "Something went wrong on my side; the details are in the server log."
        await self._reply(message, text)

    # -- admission ----------------------------------------------------------------------------

    def _parse(self, message: IncomingMessage) -> Command | None:
        bot_ids: Sequence[str] = getattr(self.provider, "bot_ids", ())
        command = parse_command(message.text, bot_name=self.bot_name, bot_ids=bot_ids)
        if command is None and getattr(self.provider, "direct", False):
            return parse_body(message.text, bot_name=self.bot_name)
        return command

    async def _admitted(self, message: IncomingMessage) -> bool:
        """Within the user's rate limit; the first refusal of a burst is answered, the rest are
        dropped so that a flood never turns into a flood of answers."""
        key = user_key(message.user)
        wait_s = self.limiter.take(key)
        if not wait_s:
            self._told_to_slow_down.discard(key)
            return True
        if key not in self._told_to_slow_down:
            self._told_to_slow_down.add(key)
            await self._reply(
                message,
                f"You are sending commands faster than I take them "
                f"({self.settings.chat_command_rate} a minute). Try again in "
                f"{max(1, round(wait_s))} s.",
            )
        log.info("chat_command_rate_limited", user=key)
        return False

    def _grant(self, message: IncomingMessage, action: Action) -> Grant:
        grant = self.access.grant_for(message.user)
        if grant is None:
            raise _Answer(
                f"Sorry {message.user.name}, I do not take commands from you yet. An admin can "
                f"add {user_key(message.user)} to STITCHWORK_CHAT_USERS."
            )
        if not grant.allows(action):
            allowed = ", ".join(sorted(a.value for a in grant.actions)) or "only help"
            raise _Answer(
                f"Sorry {message.user.name}, you may not {action.value} here (you may use: "
                f"{allowed}). An admin can change that in STITCHWORK_CHAT_USERS."
            )
        return grant

    # -- the actions --------------------------------------------------------------------------

    async def _run(self, message: IncomingMessage, command: Command) -> str:
        action = command.action
        grant = self._grant(message, action)
        if action is Action.HELP:
            return help_text(command.topic, bot_name=self.bot_name)
        ws = await self._workspace(grant.workspace)
        actor = f"chat:{user_key(message.user)}"
        if action is Action.FIX:
            assert command.issue is not None
            return await self._fix(message, ws, command.issue, command.agent, actor)
        if action is Action.JOBS:
            return self._jobs_list(await self.jobs.list_jobs(ws, limit=RECENT_JOBS))
        if action is Action.QUIET and command.job is None:
            self._herald().quiet(None)
            return "Live output is off for every job."
        assert command.job is not None
        job = await self._resolve(ws, command.job, message.channel_id)
        if action is Action.STATUS:
            return self._status(job)
        if action is Action.CANCEL:
            return await self._cancel(ws, job, actor)
        if action is Action.RETRY:
            return await self._retry(ws, job, actor)
        if action is Action.VERBOSE:
            self._herald().verbose(job.id, True)
            return (
                f"Live output of job {job.id} goes to its thread now. Say @{self.bot_name} "
                f"quiet {job.id} to stop it."
            )
        self._herald().quiet(job.id)
        return f"Live output of job {job.id} is off."

    async def _fix(
        self, message: IncomingMessage, ws: UUID, issue: IssueRef, agent: str | None, actor: str
    ) -> str:
        repo_name = issue.repo or self._channel_repo(message.channel_id)
        if repo_name is None:
            raise _Answer(
                f"This channel has no default repository, so I do not know where #{issue.number}"
                f" is. Say @{self.bot_name} fix owner/repo#{issue.number}, or an admin can set "
                "one in STITCHWORK_CHAT_CHANNEL_REPOS."
            )
        path = self._repo_path(repo_name)
        key = issue.key(repo_name)
        where = f" on {issue.host}" if issue.host else ""
        prompt = (
            f"Fix issue {key}{where}.\n\nRequested from chat by {message.user.name} "
            f"({user_key(message.user)})."
        )
        # A fix may touch any file of the repository: the whole of it is claimed.
        payload = {"repo": path, "prompt": prompt, "issue_ref": key, "claims": ["**"]}
        new = NewJob(AGENT_TASK, payload, issue_ref=key, agent_profile=agent)
        self.jobs.spec(new)  # refuse before a thread exists (guard rails, repository, profile)
        thread = await self.provider.create_thread(
            message.channel_id,
            f"{key}: fix",
            f"{message.user.name} asked me to fix {key}. Updates follow in this thread.",
        )
        metadata = {
            "chat": {
                "provider": self.provider.name,
                "channel": message.channel_id,
                "thread": thread.thread_id,
            }
        }
        new = NewJob(AGENT_TASK, payload, issue_ref=key, agent_profile=agent, metadata=metadata)
        job = (await self.jobs.submit(ws, new, actor=actor)).job
        log.info("chat_job_submitted", job_id=str(job.id), issue_ref=key, actor=actor)
        text = (
            f"Started job {job.id} for {key} (agent {agent or 'the repository default'}). "
            f"Say @{self.bot_name} status {job.id} any time."
        )
        if thread.thread_id is not None:
            await self.provider.send_thread_message(thread.thread_id, text)
            return f"Job {job.id} for {key} is queued; its thread has the details."
        return text

    async def _cancel(self, ws: UUID, job: Job, actor: str) -> str:
        try:
            cancelled = await self.jobs.cancel(
                ws, job.id, actor=actor, reason="cancelled from chat"
            )
        except InvalidTransition:
            return (
                f"Job {job.id} has already ended ({job.status.value}); there is nothing to cancel."
            )
        return f"Job {cancelled.id} is cancelled (it was {job.status.value})."

    async def _retry(self, ws: UUID, job: Job, actor: str) -> str:
        try:
            retried = await self.jobs.retry(ws, job.id, actor=actor)
        except InvalidTransition:
            return (
                f"Job {job.id} is {job.status.value}; only failed or cancelled jobs can be retried."
            )
        return f"Job {retried.id} is queued again (attempt {retried.attempt})."

    # -- job references -----------------------------------------------------------------------

    async def _resolve(self, ws: UUID, ref: JobRef, channel_id: str) -> Job:
        if ref.job_id is not None:
            try:
                return await self.jobs.get(ws, ref.job_id)
            except NotFound:
                raise _Answer(f"I cannot find job {ref.job_id} in this workspace.") from None
        if ref.prefix is not None:
            return await self._by_prefix(ws, ref.prefix)
        assert ref.issue is not None
        repo = ref.issue.repo or self._channel_repo(channel_id)
        if repo is None:
            raise _Answer(
                f"This channel has no default repository, so #{ref.issue.number} could be any "
                f"repository's issue; say owner/repo#{ref.issue.number}."
            )
        key = ref.issue.key(repo)
        latest = await self.jobs.list_jobs(ws, issue_ref=key, limit=1)
        if not latest:
            raise _Answer(f"There is no job for {key} yet. Say @{self.bot_name} fix {key}.")
        return latest[0]

    async def _by_prefix(self, ws: UUID, prefix: str) -> Job:
        """The one job whose id starts with ``prefix``. Ids sort as numbers in both databases,
        so the jobs below the first id past the prefix's range, newest first, are its matches."""
        digits = prefix.replace("-", "")
        top = int(digits.ljust(32, "f"), 16)
        before = UUID(int=top + 1) if top < _MAX_UUID else None
        below = await self.jobs.list_jobs(ws, before=before, limit=2)
        matches = [job for job in below if job.id.hex.startswith(digits)]
        if not matches:
            raise _Answer(
                f"No job id starts with {prefix} in this workspace. Say @{self.bot_name} jobs "
                "to see the recent ones."
            )
        if len(matches) > 1:
            raise _Answer(
                f"{prefix} is the start of more than one job id ({matches[0].id}, "
                f"{matches[1].id}, ...); give a few more characters."
            )
        return matches[0]

    # -- settings -----------------------------------------------------------------------------

    def _channel_repo(self, channel_id: str) -> str | None:
        repos = self.settings.chat_channel_repos
        return repos.get(channel_id) or repos.get("*")

    def _repo_path(self, repo_name: str) -> str:
        repos = {name.lower(): path for name, path in self.settings.chat_repos.items()}
        path = repos.get(repo_name.lower())
        if path is None:
            raise _Answer(
                f"I do not know where {repo_name} is checked out; an admin can add it to "
                "STITCHWORK_CHAT_REPOS."
            )
        return path

    async def _workspace(self, name: str) -> UUID:
        async with self._workspace_lock:
            if name not in self._workspaces:
                workspace, _ = await self.auth.ensure_workspace(name)
                self._workspaces[name] = workspace.id
            return self._workspaces[name]

    def _herald(self) -> HeraldControl:
        if self.herald is None:
            raise _Answer("Live output is not available here: no herald is running.")
        return self.herald

    # -- answers ------------------------------------------------------------------------------

    async def _reply(self, message: IncomingMessage, text: str) -> None:
        try:
            if message.thread_id is not None:
                await self.provider.send_thread_message(message.thread_id, text)
            else:
                await self.provider.send_message(message.channel_id, text)
        except Exception:
            log.exception("chat_reply_failed", provider=self.provider.name)

    def _status(self, job: Job) -> str:
        about = f"{job.type}, {job.issue_ref}" if job.issue_ref else job.type
        parts = [f"Job {job.id} ({about}) is {job.status.value}"]
        if job.status is JobStatus.RUNNING and job.progress_percent:
            parts.append(f"{job.progress_percent}% done")
        parts.append(f"attempt {job.attempt} of {job.max_attempts}")
        when = job.completed_at or job.started_at or job.queued_at or job.created_at
        verb = "ended" if job.completed_at else "started" if job.started_at else "queued"
        parts.append(f"{verb} {self._ago(when)}")
        text = ", ".join(parts) + "."
        if job.error and job.status is not JobStatus.COMPLETED:
            text += f" Last error: {_excerpt(job.error)}"
        return text

    def _jobs_list(self, jobs: list[Job]) -> str:
        if not jobs:
            return f"There are no jobs yet. Say @{self.bot_name} fix #42 to start one."
        lines = [f"The {len(jobs)} most recent jobs:" if len(jobs) > 1 else "The most recent job:"]
        for job in jobs:
            about = f" for {job.issue_ref}" if job.issue_ref else ""
            lines.append(
                f"  {job.id}  {job.type}{about}: {job.status.value}, "
                f"created {self._ago(job.created_at)}"
            )
        return "\n".join(lines)

    def _ago(self, when: datetime) -> str:
        seconds = max(0, int((self.clock.now() - when).total_seconds()))
        if seconds < 60:
            return f"{seconds} s ago"
        if seconds < 3600:
            return f"{seconds // 60} min ago"
        if seconds < 86_400:
            return f"{seconds // 3600} h ago"
        return f"{seconds // 86_400} days ago"


def _excerpt(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
