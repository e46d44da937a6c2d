"""The Discord provider against discord.py itself: its ``Client``, its gateway parsers (READY,
GUILD_CREATE, MESSAGE_CREATE, THREAD_CREATE) building real ``Message``, ``TextChannel``,
``Thread`` and ``Member`` objects, and its HTTP client with only the transport replaced by a
double that answers from recorded Discord API payloads and records every request. No network.

What this does not exercise: the gateway websocket itself (login to the real service,
heartbeats, reconnect and resume) and discord.py's own 429 handling, which live below
``HTTPClient.request``; see docs/chat.md.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import discord.http
import pytest

from stitchwork.chat.base import ChatUser, IncomingMessage
from stitchwork.chat.bridge import ChatBridge
from stitchwork.chat.discord import MAX_MESSAGE_CHARS, DiscordChatProvider
from stitchwork.clock import FakeClock
from stitchwork.domain.events import Event, EventType
from stitchwork.errors import BackendUnavailable
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.herald import ChatRate, Herald
from tests.conftest import Backend
from tests.contract.agent_repos import make_repo
from tests.contract.helpers import wait_until

TRAFFIC: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "discord_traffic.json").read_text()
)
BOT_ID = 1100000000000000001
GUILD_ID = 1200000000000000001
MAINTAINERS = 1300000000000000001
CONTROL_ID = 1400000000000000001
GENERAL_ID = 1400000000000000002
OLD_THREAD_ID = 1500000000000000001
ALICE_ID = 1100000000000000010
TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.test.token"
FIXER_CONFIG = """
[profiles.fixer]
adapter = "command"
command = "true"
capabilities = ["repo:read", "repo:write", "git:commit", "git:merge", "shell:exec"]
"""


@dataclass(frozen=True)
class Sent:
    """One request discord.py made: when (on the test's clock), what, where, with what."""

    at: datetime
    method: str
    path: str
    json: dict[str, Any] | None


class RecordedHTTP(discord.http.HTTPClient):
    """discord.py's HTTP client whose ``request`` answers from the recorded payloads, filled
    in from the request the way Discord does (new ids, the channel, the content), and records
    each request. Everything above ``request`` (routes, payload building, the models built
    from the answers) is discord.py's own code."""

    def __init__(self, loop: Any, clock: FakeClock, *, token_valid: bool = True) -> None:
        super().__init__(loop)
        self.clock = clock
        self.token_valid = token_valid
        self.sent: list[Sent] = []
        self.thread_ids: list[int] = []
        self._ids = itertools.count(1600000000000000001)

    async def request(
        self, route: discord.http.Route, *, files: Any = None, form: Any = None, **kwargs: Any
    ) -> Any:
        body = kwargs.get("json")
        path = route.url.removeprefix(route.BASE)
        self.sent.append(Sent(self.clock.now(), route.method, path, body))
        if not self.token_valid:  # what Discord answers to a bad token
            unauthorized = SimpleNamespace(status=401, reason="Unauthorized")
            raise discord.HTTPException(unauthorized, {"message": "401: Unauthorized", "code": 0})
        template = TRAFFIC["rest"].get(f"{route.method} {route.path}")
        if template is None:
            raise AssertionError(f"no recorded answer for {route.method} {route.path}")
        answer = copy.deepcopy(template)
        if route.path.endswith("/threads"):
            self.thread_ids.append(next(self._ids))
            thread_id = str(self.thread_ids[-1])
            answer.update(id=thread_id, parent_id=str(route.channel_id), name=body["name"])
            answer["member"]["id"] = thread_id
        elif "content" in answer:
            message_id = path.rsplit("/", 1)[1] if route.method == "PATCH" else str(next(self._ids))
            answer.update(id=message_id, channel_id=str(route.channel_id), content=body["content"])
        return answer

    def to(self, channel_id: int | str, since: int = 0) -> list[Sent]:
        """The requests about messages of one channel or thread (from request ``since`` on)."""
        prefix = f"/channels/{channel_id}/messages"
        return [s for s in self.sent[since:] if s.path.startswith(prefix)]


@dataclass
class Bot:
    provider: DiscordChatProvider
    http: RecordedHTTP
    clock: FakeClock
    heard: list[IncomingMessage]
    _ids: itertools.count[int]

    @property
    def state(self) -> Any:
        return self.provider.client._connection

    def gateway(self, event: str, data: dict[str, Any]) -> None:
        """Feed a gateway event to discord.py's parser for it, as its websocket would."""
        self.state.parsers[event](data)

    def user_says(self, content: str, *, channel: int = CONTROL_ID, **changes: Any) -> str:
        data = copy.deepcopy(TRAFFIC["gateway"]["MESSAGE_CREATE"])
        data.update(id=str(next(self._ids)), channel_id=str(channel), content=content)
        if f"<@{BOT_ID}>" in content:
            data["mentions"] = [TRAFFIC["rest"]["GET /users/@me"]]
        data.update(changes)
        self.gateway("MESSAGE_CREATE", data)
        return str(data["id"])


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    clock = FakeClock()
    client = discord.Client(
        intents=discord.Intents.default(),
        allowed_mentions=discord.AllowedMentions.none(),
        guild_ready_timeout=0.01,
    )
    http = RecordedHTTP(client.loop, clock)
    client.http = http
    client._connection.http = http
    provider = DiscordChatProvider(TOKEN, GUILD_ID, CONTROL_ID, client=client)
    heard: list[IncomingMessage] = []

    async def hear(message: IncomingMessage) -> None:
        heard.append(message)

    provider.on_command(hear)
    await client.login(TOKEN)  # GET /users/@me and /oauth2/applications/@me through the double
    bot = Bot(provider, http, clock, heard, itertools.count(1700000000000000001))
    bot.gateway("READY", copy.deepcopy(TRAFFIC["gateway"]["READY"]))
    bot.gateway("GUILD_CREATE", copy.deepcopy(TRAFFIC["gateway"]["GUILD_CREATE"]))
    await asyncio.wait_for(client.wait_until_ready(), 10)
    try:
        yield bot
    finally:
        await client.close()


async def test_login_and_ready_go_through_discord_py(bot: Bot) -> None:
    assert [(s.method, s.path) for s in bot.http.sent] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    assert bot.provider.is_connected()
    assert bot.provider.bot_ids == (str(BOT_ID),)
    control = bot.provider.client.get_channel(CONTROL_ID)
    assert isinstance(control, discord.TextChannel)
    assert control.name == "stitchwork"


async def test_a_refused_token_is_a_clear_connection_error() -> None:
    client = discord.Client(intents=discord.Intents.default())
    http = RecordedHTTP(client.loop, FakeClock(), token_valid=False)
    client.http = http
    client._connection.http = http
    provider = DiscordChatProvider(TOKEN, GUILD_ID, CONTROL_ID, client=client)
    with pytest.raises(BackendUnavailable, match="could not connect to Discord: Improper token"):
        await provider.connect()  # discord.py's Client.start: login fails, no gateway tried
    assert [(s.method, s.path) for s in http.sent] == [("GET", "/users/@me")]
    assert not provider.is_connected()
    await provider.disconnect()


async def test_messages_for_the_bot_in_the_control_channel_and_its_threads_are_heard(
    bot: Bot,
) -> None:
    bot.user_says(f"<@{BOT_ID}> status #7", channel=GENERAL_ID)  # another channel
    bot.user_says("lunch at noon?")  # not for the bot
    bot.user_says(f"<@{BOT_ID}> jobs", author={**TRAFFIC["rest"]["GET /users/@me"]})  # itself
    other_bot = {**TRAFFIC["gateway"]["MESSAGE_CREATE"]["author"], "id": "42", "bot": True}
    bot.user_says(f"<@{BOT_ID}> jobs", author=other_bot)
    bot.user_says(f"<@{BOT_ID}> jobs", guild_id="1299999999999999999")  # not our guild
    bot.user_says(f"<@{BOT_ID}>  fix #42")
    bot.user_says("@stitch status #7", channel=OLD_THREAD_ID)
    await wait_until(lambda: asyncio.sleep(0, len(bot.heard) >= 2), what="the two messages")

    alice = ChatUser("discord", str(ALICE_ID), "Alice", (str(MAINTAINERS), "maintainers"))
    assert bot.heard == [
        IncomingMessage(alice, str(CONTROL_ID), f"<@{BOT_ID}>  fix #42"),
        IncomingMessage(alice, str(CONTROL_ID), "@stitch status #7", thread_id=str(OLD_THREAD_ID)),
    ]


async def test_create_thread_posts_a_starter_message_and_opens_a_thread_from_it(
    bot: Bot,
) -> None:
    ref = await bot.provider.create_thread(str(CONTROL_ID), "acme/app#42: fix", "alice asked")
    starter, opened = bot.http.sent[-2:]
    assert (starter.method, starter.path) == ("POST", f"/channels/{CONTROL_ID}/messages")
    assert starter.json is not None
    assert starter.json["content"] == "alice asked"
    assert starter.json["allowed_mentions"] == {"parse": []}  # nobody is pinged
    assert (opened.method, opened.path) == (
        "POST",
        f"/channels/{CONTROL_ID}/messages/{ref.message_id}/threads",
    )
    assert opened.json is not None
    name_and_archive = (opened.json["name"], opened.json["auto_archive_duration"])
    assert name_and_archive == ("acme/app#42: fix", 1440)
    assert ref.channel_id == str(CONTROL_ID)
    assert ref.thread_id is not None

    in_thread = await bot.provider.send_thread_message(ref.thread_id, "x" * 2500)
    last = bot.http.sent[-1]
    assert last.path == f"/channels/{ref.thread_id}/messages"
    assert last.json is not None
    assert len(last.json["content"]) == MAX_MESSAGE_CHARS
    assert (in_thread.channel_id, in_thread.thread_id) == (ref.thread_id, ref.thread_id)

    await bot.provider.edit_message(in_thread, "shorter")
    edit = bot.http.sent[-1]
    assert (edit.method, edit.path) == (
        "PATCH",
        f"/channels/{ref.thread_id}/messages/{in_thread.message_id}",
    )
    assert edit.json is not None
    assert edit.json["content"] == "shorter"


async def test_fix_from_discord_opens_the_jobs_thread_and_answers_in_it(
    bot: Bot, sqlite_backend: Backend, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "app", {"README.md": "app\n"}, config=FIXER_CONFIG)
    engine = await sqlite_backend.open_engine(
        chat_users={"discord:role:maintainers": {"workspace": "default", "actions": "*"}},
        chat_repos={"acme/app": str(repo)},
        chat_channel_repos={str(CONTROL_ID): "acme/app"},
    )
    try:
        ChatBridge(bot.provider, engine.jobs, engine.auth, engine.settings).attach()
        before = len(bot.http.sent)
        bot.user_says(f"<@{BOT_ID}> fix #42")
        await wait_until(
            lambda: asyncio.sleep(0, len(bot.http.sent) >= before + 4), what="the answers"
        )
        starter, opened, started, answer = bot.http.sent[before:]
        assert starter.path == f"/channels/{CONTROL_ID}/messages"
        assert starter.json is not None
        assert starter.json["content"] == (
            "Alice asked me to fix acme/app#42. Updates follow in this thread."
        )
        assert opened.path.startswith(f"/channels/{CONTROL_ID}/messages/")
        assert opened.json is not None
        name_and_archive = (opened.json["name"], opened.json["auto_archive_duration"])
        assert name_and_archive == ("acme/app#42: fix", 1440)
        thread_id = str(bot.http.thread_ids[-1])
        [job] = await _jobs(engine)
        assert started.path == f"/channels/{thread_id}/messages"
        assert started.json is not None
        assert started.json["content"].startswith(f"Started job {job.id} for acme/app#42")
        assert answer.path == f"/channels/{CONTROL_ID}/messages"
        assert answer.json is not None
        assert answer.json["content"] == (
            f"Job {job.id} for acme/app#42 is queued; its thread has the details."
        )
        created = await engine.store.list_events(job.id, types=["job.created"])
        assert created[0].payload["metadata"] == {
            "chat": {"provider": "discord", "channel": str(CONTROL_ID), "thread": thread_id}
        }

        # Discord announces the new thread on the gateway; a question asked in it is answered
        # in it.
        thread = copy.deepcopy(
            TRAFFIC["rest"]["POST /channels/{channel_id}/messages/{message_id}/threads"]
        )
        thread.update(id=thread_id, parent_id=str(CONTROL_ID), name="acme/app#42: fix")
        thread["member"]["id"] = thread_id
        bot.gateway("THREAD_CREATE", {**thread, "newly_created": True})
        before = len(bot.http.sent)
        bot.user_says(f"<@{BOT_ID}> status #42", channel=int(thread_id))
        await wait_until(lambda: asyncio.sleep(0, len(bot.http.sent) > before), what="status")
        status = bot.http.sent[-1]
        assert status.path == f"/channels/{thread_id}/messages"
        assert status.json is not None
        assert status.json["content"].startswith(f"Job {job.id} (agent-task, acme/app#42) is")
    finally:
        await engine.close()


async def _jobs(engine: Engine) -> list[Any]:
    ws, _ = await engine.auth.ensure_workspace("default")
    return await engine.jobs.list_jobs(ws.id)


async def test_a_burst_of_1000_events_is_coalesced_within_discords_rate_limit(
    bot: Bot, sqlite_backend: Backend
) -> None:
    engine = await sqlite_backend.open_engine()
    herald = Herald(
        engine.bus,
        engine.store,
        bot.provider,
        routes={},
        default_channel=None,
        rate=ChatRate(5, 5.0),
        clock=bot.clock,
    )
    running = asyncio.create_task(herald.run())
    try:
        await asyncio.wait_for(herald.ready.wait(), 10)
        ref = await bot.provider.create_thread(str(CONTROL_ID), "acme/app#42: fix", "started")
        assert ref.thread_id is not None
        thread = ref.thread_id
        events = _burst(await engine.store.last_event_id(), thread, bot.clock.now())
        assert len(events) == 1000
        sent = len(bot.http.sent)

        async def says(where: int | str, count: int) -> bool:
            return len(bot.http.to(where, sent)) >= count

        # One at a time while the budget lasts: each update is a message of its own.
        for count, event in enumerate(events[:5], start=1):
            await engine.bus.publish([event])
            await wait_until(lambda c=count: says(thread, c), what=f"thread message {count}")
        # The rest at once: the thread's budget (5 per 5 s) is spent, so it waits and folds.
        await engine.bus.publish(events[5:])
        await wait_until(lambda: says(CONTROL_ID, 3), what="the channel's milestones")
        assert len(bot.http.to(thread, sent)) == 5
        assert herald.pending > 0

        bot.clock.advance(timedelta(seconds=5))  # the budget returns
        await wait_until(lambda: says(thread, 6), what="the thread's catch-up")
        await wait_until(lambda: asyncio.sleep(0, herald.pending == 0), what="nothing pending")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await engine.close()

    in_thread, channel = bot.http.to(thread, sent), bot.http.to(CONTROL_ID, sent)
    assert len(in_thread) == 6  # for 1,000 events
    assert len(channel) == 3  # queued, started, completed
    windows = {s.at for s in in_thread}
    assert all(sum(s.at == at for s in in_thread) <= 5 for at in windows)
    first_five, last = in_thread[:5], in_thread[5]
    # The catch-up edits the thread's latest status message (discord.py's PATCH) to show the
    # final state, saying how much it folded.
    posted = [s for s in first_five if s.method == "POST"]
    assert last.method == "PATCH"
    assert last.path.startswith(f"/channels/{thread}/messages/")
    assert last.json is not None
    content = last.json["content"]
    assert "✅ Job" in content
    assert "completed" in content
    assert "earlier update" in content
    assert len(posted) == 5
    assert channel[-1].json is not None
    assert "completed" in channel[-1].json["content"]
    assert herald.dropped >= 990


def _burst(last_id: int, thread: str, now: datetime) -> list[Event]:
    """job.created (from Discord, with its thread), job.started, 997 progress events and
    job.completed: 1,000 events of one job."""
    job_id = uuid.uuid4()
    chat = {"provider": "discord", "channel": str(CONTROL_ID), "thread": thread}
    specs: list[tuple[str, dict[str, Any]]] = [
        (
            EventType.JOB_CREATED.value,
            {
                "status": "pending",
                "type": "agent-task",
                "issue_ref": "acme/app#42",
                "metadata": {"chat": chat},
            },
        ),
        (EventType.JOB_STARTED.value, {"status": "running", "attempt": 1}),
    ]
    specs += [("job.progress", {"progress_percent": n % 100}) for n in range(1, 998)]
    specs.append((EventType.JOB_COMPLETED.value, {"status": "completed"}))
    return [
        Event(last_id + seq, job_id, seq, kind, "test", payload, now + timedelta(milliseconds=seq))
        for seq, (kind, payload) in enumerate(specs, start=1)
    ]
