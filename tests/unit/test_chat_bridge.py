"""The chat bridge on a real job service (SQLite in tmp): authorisation, the per-user rate
limit, job references, guard rails and syntax errors, all answered in calm plain text."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stitchwork.chat.access import ChatAccess, CommandRateLimiter
from stitchwork.chat.base import ChatUser, CommandCallback, IncomingMessage, MessageRef
from stitchwork.chat.bridge import ChatBridge
from stitchwork.clock import FakeClock
from stitchwork.domain.chat_commands import Action
from stitchwork.domain.events import EventType
from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.errors import ConfigError
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.agent_repos import make_repo

ALICE = ChatUser("slack", "U1", "alice")
BOB = ChatUser("slack", "U2", "bob")  # may only look
MALLORY = ChatUser("slack", "U9", "mallory")  # unknown
CAROL = ChatUser("discord", "77", "carol", roles=("111", "maintainers"))
CHANNEL = "C1"
READER_CONFIG = """
default_profile = "writer"

[profiles.writer]
adapter = "command"
command = "true"
capabilities = ["repo:read", "repo:write", "git:commit", "git:merge", "shell:exec"]

[profiles.reader]
adapter = "command"
command = "true"
capabilities = ["repo:read"]
"""
SHOUTING = re.compile(r"\b(?:FAILED|FAILURE|ERROR|URGENT|WARNING|FATAL|CRITICAL|DENIED)\b")


@dataclass
class FakeProvider:
    """The port, recording what the bridge says."""

    name: str = "slack"
    direct: bool = False
    said: list[tuple[str, str]] = field(default_factory=list)  # (channel or thread, text)
    threads: list[tuple[str, str, str]] = field(default_factory=list)  # (channel, title, text)
    callbacks: list[CommandCallback] = field(default_factory=list)

    async def connect(self) -> None:
        return None

    async def disconnect(self) -> None:
        return None

    def is_connected(self) -> bool:
        return True

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        self.said.append((channel_id, text))
        return MessageRef(channel_id, f"m{len(self.said)}")

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        self.threads.append((channel_id, title, text))
        return MessageRef(channel_id, "starter", thread_id=f"T{len(self.threads)}")

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        self.said.append((thread_id, text))
        return MessageRef(thread_id, f"m{len(self.said)}", thread_id=thread_id)

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        self.said.append((ref.message_id, f"(edit) {text}"))

    def on_command(self, callback: CommandCallback) -> None:
        self.callbacks.append(callback)


@dataclass
class FakeHerald:
    calls: list[tuple[str, uuid.UUID | None]] = field(default_factory=list)

    def verbose(self, job_id: uuid.UUID, on: bool) -> None:
        self.calls.append(("verbose" if on else "verbose-off", job_id))

    def quiet(self, job_id: uuid.UUID | None = None) -> None:
        self.calls.append(("quiet", job_id))


@dataclass
class Chat:
    engine: Engine
    bridge: ChatBridge
    provider: FakeProvider
    herald: FakeHerald
    clock: FakeClock
    ws: uuid.UUID
    repo: Path

    async def say(self, text: str, user: ChatUser = ALICE, thread: str | None = None) -> str:
        """Send ``text`` as ``user``; the bridge's answer ('' when it said nothing)."""
        before = len(self.provider.said)
        await self.bridge.handle(IncomingMessage(user, CHANNEL, text, thread_id=thread))
        new = self.provider.said[before:]
        for _, answer in new:
            assert not SHOUTING.search(answer), answer
        return new[-1][1] if new else ""

    async def job(self, issue_ref: str | None = None) -> Job:
        new = NewJob("noop", {}, issue_ref=issue_ref, max_attempts=1)
        return (await self.engine.jobs.submit(self.ws, new, actor="test")).job


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "app", {"README.md": "app\n"}, config=READER_CONFIG)


@pytest.fixture
async def chat(sqlite_backend: Backend, repo: Path) -> AsyncIterator[Chat]:
    users: dict[str, Any] = {
        "slack:U1": {"workspace": "default", "actions": "*"},
        "slack:U2": {"workspace": "default", "actions": ["status", "jobs"]},
        "discord:role:maintainers": {"workspace": "default", "actions": ["status", "cancel"]},
        "discord:role:111": {"workspace": "default", "actions": ["retry"]},
    }
    engine = await sqlite_backend.open_engine(
        chat_users=users,
        chat_repos={"acme/app": str(repo)},
        chat_channel_repos={CHANNEL: "acme/app"},
        chat_command_rate=1000,
    )
    ws, _ = await engine.auth.ensure_workspace("default")
    clock, provider, herald = FakeClock(), FakeProvider(), FakeHerald()
    bridge = ChatBridge(
        provider, engine.jobs, engine.auth, engine.settings, herald=herald, clock=clock
    )
    bridge.attach()
    try:
        yield Chat(engine, bridge, provider, herald, clock, ws.id, repo)
    finally:
        await engine.close()


@pytest.fixture
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """Jobs get the ids the test puts in this list, in order."""
    ids: list[uuid.UUID] = []
    monkeypatch.setattr("stitchwork.storage.jobs.new_id", lambda: ids.pop(0))
    return ids


# -- authorisation ----------------------------------------------------------------------------


async def test_an_unknown_user_is_refused_politely_and_nothing_happens(chat: Chat) -> None:
    answer = await chat.say("@stitch fix #42", MALLORY)
    assert answer.startswith("Sorry mallory")
    assert "slack:U9" in answer
    assert "STITCHWORK_CHAT_USERS" in answer
    assert chat.provider.threads == []
    assert await chat.engine.jobs.list_jobs(chat.ws) == []


async def test_an_unknown_users_syntax_error_gets_the_refusal_not_the_grammar(chat: Chat) -> None:
    answer = await chat.say("@stitch fxi #42", MALLORY)
    assert answer.startswith("Sorry mallory")
    assert "did you mean" not in answer


async def test_a_user_is_refused_the_actions_not_granted_and_told_what_is_allowed(
    chat: Chat,
) -> None:
    job = await chat.job()
    answer = await chat.say(f"@stitch cancel {job.id}", BOB)
    assert answer.startswith("Sorry bob, you may not cancel here")
    assert "jobs, status" in answer
    assert (await chat.engine.jobs.get(chat.ws, job.id)).status is JobStatus.QUEUED
    assert f"Job {job.id} (noop) is queued" in await chat.say(f"@stitch status {job.id}", BOB)
    assert "fix <issue>" in await chat.say("@stitch help", BOB)  # help is for every known user


async def test_role_entries_grant_the_union_of_their_actions(chat: Chat) -> None:
    job = await chat.job()
    assert "is cancelled" in await chat.say(f"@stitch cancel {job.id}", CAROL)
    assert "queued again" in await chat.say(f"@stitch retry {job.id}", CAROL)
    assert "may not fix" in await chat.say("@stitch fix #42", CAROL)


def test_a_bad_users_entry_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"'slack:U1' allows the unknown action 'deploy'"):
        ChatAccess({"slack:U1": {"workspace": "default", "actions": ["deploy"]}})
    with pytest.raises(ConfigError, match="needs a workspace name"):
        ChatAccess({"slack:U1": {"actions": "*"}})
    with pytest.raises(ConfigError, match="is not a chat user"):
        ChatAccess({"alice": {"workspace": "default", "actions": "*"}})


def test_a_platform_wildcard_grants_anyone_on_that_platform_only() -> None:
    access = ChatAccess({"slack:*": {"workspace": "team", "actions": ["status"]}})
    grant = access.grant_for(MALLORY)
    assert grant is not None
    assert grant.workspace == "team"
    assert grant.allows(Action.STATUS)
    assert not grant.allows(Action.FIX)
    assert access.grant_for(CAROL) is None


# -- rate limit -------------------------------------------------------------------------------


async def test_commands_are_rate_limited_per_user_and_the_bucket_refills(chat: Chat) -> None:
    chat.bridge.limiter = CommandRateLimiter(3, chat.clock)
    chat.bridge.settings = chat.bridge.settings.model_copy(update={"chat_command_rate": 3})
    for _ in range(3):
        assert (await chat.say("@stitch jobs")).startswith("There are no jobs yet")
    refusal = await chat.say("@stitch jobs")
    assert refusal.startswith("You are sending commands faster than I take them (3 a minute)")
    assert "Try again in 20 s" in refusal
    assert await chat.say("@stitch jobs") == ""  # one refusal per burst, not a flood of them
    assert (await chat.say("@stitch jobs", BOB)).startswith("There are no jobs")  # per user
    chat.clock.advance(timedelta(seconds=20))
    assert (await chat.say("@stitch jobs")).startswith("There are no jobs yet")
    assert "faster" in await chat.say("@stitch jobs")  # a new burst gets a new refusal


async def test_messages_not_addressed_to_the_bot_are_ignored_and_not_counted(chat: Chat) -> None:
    for _ in range(10):
        assert await chat.say("lunch at noon?") == ""
    assert (await chat.say("@stitch jobs")).startswith("There are no jobs yet")


def test_the_token_bucket_refills_evenly() -> None:
    clock = FakeClock()
    limiter = CommandRateLimiter(6, clock)  # one token every 10 s
    assert [limiter.take("u") for _ in range(6)] == [0.0] * 6
    assert limiter.take("u") == pytest.approx(10.0)
    clock.advance(timedelta(seconds=5))
    assert limiter.take("u") == pytest.approx(5.0)
    clock.advance(timedelta(seconds=5))
    assert limiter.take("u") == 0.0
    clock.advance(timedelta(hours=1))  # never more than the burst
    assert [limiter.take("u") for _ in range(7)][-1] > 0


# -- job references ---------------------------------------------------------------------------


async def test_a_job_is_found_by_full_id_with_or_without_dashes(chat: Chat) -> None:
    job = await chat.job("acme/app#5")
    for ref in (str(job.id), job.id.hex):
        answer = await chat.say(f"@stitch status {ref}")
        assert answer.startswith(f"Job {job.id} (noop, acme/app#5) is queued, attempt 1 of 1")
    missing = uuid.uuid4()
    assert await chat.say(f"@stitch status {missing}") == (
        f"I cannot find job {missing} in this workspace."
    )


async def test_a_unique_prefix_finds_its_job_an_ambiguous_one_asks_for_more(
    chat: Chat, fixed_ids: list[uuid.UUID]
) -> None:
    fixed_ids += [
        uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-100000000000"),
        uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-200000000000"),
        uuid.UUID("0190aaab-0000-7000-8000-000000000000"),
    ]
    first, second, third = [await chat.job() for _ in range(3)]
    assert f"Job {third.id}" in await chat.say("@stitch status 0190aaab")
    assert f"Job {first.id}" in await chat.say("@stitch status 0190aaaa-bbbb-7ccc-8ddd-1")
    assert f"Job {second.id}" in await chat.say("@stitch status 0190AAAABBBB7CCC8DDD2")
    ambiguous = await chat.say("@stitch status 0190aaaa")
    assert ambiguous.startswith("0190aaaa is the start of more than one job id")
    assert str(first.id) in ambiguous
    assert str(second.id) in ambiguous
    unknown = await chat.say("@stitch status 0190ffff")
    assert unknown.startswith("No job id starts with 0190ffff in this workspace")


async def test_a_prefix_includes_the_job_at_the_very_top_of_its_range(
    chat: Chat, fixed_ids: list[uuid.UUID]
) -> None:
    fixed_ids += [
        uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeef"),
        uuid.UUID("0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeef0"),
    ]
    top, after = await chat.job(), await chat.job()
    assert f"Job {top.id}" in await chat.say("@stitch status 0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeee")
    assert f"Job {after.id}" in await chat.say("@stitch status 0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeef")


async def test_an_issue_ref_means_that_issues_latest_job(chat: Chat) -> None:
    older, newer = await chat.job("acme/app#42"), await chat.job("acme/app#42")
    await chat.job("acme/app#43")
    for ref in ("#42", "acme/app#42", "#0042", "https://github.com/acme/app/issues/42"):
        assert f"Job {newer.id}" in await chat.say(f"@stitch status {ref}")
    assert older.id != newer.id
    answer = await chat.say("@stitch status #7")
    assert answer == "There is no job for acme/app#7 yet. Say @stitch fix acme/app#7."


async def test_another_workspaces_job_is_not_found(chat: Chat) -> None:
    other, _ = await chat.engine.auth.ensure_workspace("other")
    job = (await chat.engine.jobs.submit(other.id, NewJob("noop"), actor="test")).job
    assert "cannot find" in await chat.say(f"@stitch cancel {job.id}")
    assert "No job id starts with" in await chat.say(f"@stitch status {job.id.hex[:20]}")


# -- actions ----------------------------------------------------------------------------------


async def test_fix_starts_an_agent_job_with_its_thread_in_the_jobs_metadata(chat: Chat) -> None:
    answer = await chat.say("<@B0T> fix #42 agent=writer")
    assert answer == ""  # no bot_ids on this provider: <@B0T> is someone else
    answer = await chat.say("@stitch fix #0042 agent=writer")
    [job] = await chat.engine.jobs.list_jobs(chat.ws)
    assert answer == f"Job {job.id} for acme/app#42 is queued; its thread has the details."
    assert chat.provider.threads == [
        (
            CHANNEL,
            "acme/app#42: fix",
            "alice asked me to fix acme/app#42. Updates follow in this thread.",
        )
    ]
    assert (
        "T1",
        f"Started job {job.id} for acme/app#42 (agent writer). Say @stitch status "
        f"{job.id} any time.",
    ) in chat.provider.said
    assert (job.type, job.issue_ref, job.agent_profile) == ("agent-task", "acme/app#42", "writer")
    assert job.payload["repo"] == str(chat.repo)
    assert job.payload["prompt"].startswith("Fix issue acme/app#42.")
    created = await chat.engine.store.list_events(job.id, types=[EventType.JOB_CREATED.value])
    assert created[0].payload["metadata"] == {
        "chat": {"provider": "slack", "channel": CHANNEL, "thread": "T1"}
    }


async def test_a_guard_rail_denial_is_answered_calmly_before_any_thread(chat: Chat) -> None:
    answer = await chat.say("@stitch fix acme/app#42 agent=reader")
    assert answer.startswith("The guard rails do not allow that: profile 'reader' may not run")
    assert "repo:write" in answer
    assert chat.provider.threads == []
    assert await chat.engine.jobs.list_jobs(chat.ws) == []


async def test_fix_without_a_known_repository_says_how_to_name_one(chat: Chat) -> None:
    answer = await chat.say("@stitch fix other/lib#3 agent=writer")
    assert answer.startswith("I do not know where other/lib is checked out")
    chat.bridge.settings = chat.bridge.settings.model_copy(update={"chat_channel_repos": {}})
    answer = await chat.say("@stitch fix #3")
    assert answer.startswith("This channel has no default repository")
    assert "@stitch fix owner/repo#3" in answer


async def test_syntax_errors_are_answered_with_an_example(chat: Chat) -> None:
    cases = {
        "@stitch fix": "fix needs an issue",
        "@stitch fxi #42": "did you mean fix?",
        "@stitch status 12": "too short to find a job",
        "@stitch": "say what to do",
    }
    for text, what in cases.items():
        answer = await chat.say(text)
        assert answer.startswith("I did not understand that: "), answer
        assert what in answer, answer
        assert "For example: @stitch " in answer, answer


async def test_cancel_and_retry_answer_what_happened_and_what_cannot_be_done(chat: Chat) -> None:
    job = await chat.job("acme/app#9")
    assert await chat.say("@stitch retry #9") == (
        f"Job {job.id} is queued; only failed or cancelled jobs can be retried."
    )
    assert await chat.say("@stitch cancel #9") == f"Job {job.id} is cancelled (it was queued)."
    assert "already ended (cancelled)" in await chat.say("@stitch cancel #9")
    assert await chat.say("@stitch retry #9") == f"Job {job.id} is queued again (attempt 2)."
    events = await chat.engine.store.list_events(job.id, types=["job.cancelled"])
    assert events[0].actor == "chat:slack:U1"


async def test_verbose_and_quiet_drive_the_herald(chat: Chat) -> None:
    job = await chat.job("acme/app#8")
    assert "goes to its thread now" in await chat.say("@stitch verbose #8")
    assert "is off" in await chat.say(f"@stitch quiet {job.id}")
    assert "every job" in await chat.say("@stitch quiet")
    assert chat.herald.calls == [("verbose", job.id), ("quiet", job.id), ("quiet", None)]


async def test_jobs_lists_the_recent_jobs_and_answers_in_the_thread_asked_in(chat: Chat) -> None:
    jobs = [await chat.job(f"acme/app#{n}") for n in (1, 2)]
    await chat.bridge.handle(IncomingMessage(ALICE, CHANNEL, "@stitch jobs", thread_id="T9"))
    where, answer = chat.provider.said[-1]
    assert where == "T9"
    assert answer.splitlines()[0] == "The 2 most recent jobs:"
    assert str(jobs[1].id) in answer.splitlines()[1]
    assert "for acme/app#2: queued" in answer


async def test_a_direct_provider_takes_commands_without_the_mention(chat: Chat) -> None:
    chat.provider.direct = True
    assert (await chat.say("jobs")).startswith("There are no jobs yet")
    assert (await chat.say("@stitch jobs")).startswith("There are no jobs yet")
    assert "unknown action" in await chat.say("lunch at noon?")
