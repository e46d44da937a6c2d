"""The Discord chat provider, on discord.py (the ``[discord]`` extra).

The bot listens in one control channel of one guild (and in the threads under it), answers
messages that mention it, and starts one thread per job from a starter message in the control
channel. discord.py does the hard parts: ``Client.start(token, reconnect=True)`` reconnects
after a lost gateway connection with exponential backoff (and resumes the session when it
can), and its HTTP client waits out Discord's rate limits (429 and the per-route buckets);
the herald's coalescing keeps the bot well below them in the first place.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import discord
import structlog

from stitchwork.chat.base import ChatUser, CommandCallback, IncomingMessage, MessageRef
from stitchwork.config import Settings
from stitchwork.errors import BackendUnavailable, InvalidRequest

__all__ = ["MAX_MESSAGE_CHARS", "DiscordChatProvider"]

log = structlog.get_logger(__name__)

MAX_MESSAGE_CHARS = 2000  # Discord refuses longer messages
MAX_THREAD_NAME_CHARS = 100
# A job's thread hides itself after a day without messages.
THREAD_ARCHIVE_MINUTES: Literal[1440] = 1440
READY_TIMEOUT_S = 60.0

_Postable = discord.TextChannel | discord.Thread


def _log_end(runner: asyncio.Task[None]) -> None:
    """discord.py gave up (a revoked token, a missing intent): say so, the bot is gone."""
    if not runner.cancelled() and runner.exception() is not None:
        log.error("discord_client_stopped", error=str(runner.exception()))


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DiscordChatProvider:
    """The Discord ``ChatProvider``: a discord.py ``Client`` in one guild and one channel."""

    name = "discord"

    def __init__(
        self,
        token: str,
        guild_id: int,
        channel_id: int,
        *,
        client: discord.Client | None = None,
        message_content: bool = False,
    ) -> None:
        if client is None:
            intents = discord.Intents.default()
            # Without this privileged intent Discord still sends the text of messages that
            # mention the bot, which is all the bridge needs.
            intents.message_content = message_content
            client = discord.Client(
                intents=intents,
                # Nobody gets pinged by what the bot says, whatever a job's output contains.
                allowed_mentions=discord.AllowedMentions.none(),
            )
        self.token = token
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.client = client
        self._callbacks: list[CommandCallback] = []
        self._threads: dict[int, discord.Thread] = {}  # threads this bot started
        self._runner: asyncio.Task[None] | None = None
        client.event(self.on_message)

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordChatProvider:
        if not (
            settings.discord_token and settings.discord_guild_id and settings.discord_channel_id
        ):
            raise InvalidRequest(
                "the Discord provider needs STITCHWORK_DISCORD_TOKEN, STITCHWORK_DISCORD_GUILD_ID "
                "and STITCHWORK_DISCORD_CHANNEL_ID",
                field="discord_token",
            )
        return cls(settings.discord_token, settings.discord_guild_id, settings.discord_channel_id)

    @property
    def bot_ids(self) -> tuple[str, ...]:
        """The bot's user id, so that ``<@id> fix #42`` addresses it."""
        user = self.client.user
        return (str(user.id),) if user is not None else ()

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Log in and open the gateway; returns once the bot is ready. A connection lost later
        is re-established by discord.py with exponential backoff."""
        if self._runner is not None:
            return
        self._runner = asyncio.create_task(
            self.client.start(self.token, reconnect=True), name="discord-client"
        )
        self._runner.add_done_callback(_log_end)
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {self._runner, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            log.info("discord_ready", user=str(self.client.user), guild_id=self.guild_id)
            return
        ready.cancel()
        runner, self._runner = self._runner, None
        failure = runner.exception() if runner.done() and not runner.cancelled() else None
        runner.cancel()
        await asyncio.gather(runner, ready, return_exceptions=True)
        await self.client.close()
        if failure is not None:
            raise BackendUnavailable(f"could not connect to Discord: {failure}")
        raise BackendUnavailable(f"Discord did not get ready within {READY_TIMEOUT_S:.0f} s")

    async def disconnect(self) -> None:
        runner, self._runner = self._runner, None
        await self.client.close()
        if runner is not None:
            await asyncio.gather(runner, return_exceptions=True)

    def is_connected(self) -> bool:
        return self.client.is_ready() and not self.client.is_closed()

    # -- incoming -----------------------------------------------------------------------------

    def on_command(self, callback: CommandCallback) -> None:
        self._callbacks.append(callback)

    async def on_message(self, message: discord.Message) -> None:
        """discord.py's ``on_message`` event: hand the messages for the bot to the bridge."""
        incoming = self.incoming(message)
        if incoming is None:
            return
        for callback in self._callbacks:
            try:
                await callback(incoming)
            except Exception:
                log.exception("discord_command_failed", message_id=message.id)

    def incoming(self, message: discord.Message) -> IncomingMessage | None:
        """The message as the bridge sees it; None unless it was written by a person in the
        control channel (or a thread under it) and mentions the bot or starts with ``@``."""
        me = self.client.user
        if message.author.bot or (me is not None and message.author.id == me.id):
            return None
        if message.guild is None or message.guild.id != self.guild_id:
            return None
        channel = message.channel
        thread_id: str | None = None
        if isinstance(channel, discord.Thread):
            parent_id, thread_id = channel.parent_id, str(channel.id)
        else:
            parent_id = channel.id
        if parent_id != self.channel_id:
            return None
        mentioned = me is not None and any(user.id == me.id for user in message.mentions)
        if not mentioned and not message.content.lstrip().startswith("@"):
            return None
        author = message.author
        roles: tuple[str, ...] = ()
        if isinstance(author, discord.Member):
            named = [r for r in author.roles if not r.is_default()]
            roles = tuple(str(r.id) for r in named) + tuple(r.name for r in named)
        user = ChatUser("discord", str(author.id), author.display_name, roles)
        return IncomingMessage(user, str(parent_id), message.content, thread_id=thread_id)

    # -- outgoing -----------------------------------------------------------------------------

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        channel = await self._channel(channel_id)
        sent = await channel.send(_clip(text))
        thread_id = str(channel.id) if isinstance(channel, discord.Thread) else None
        return MessageRef(str(channel.id), str(sent.id), thread_id=thread_id)

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        """Post ``text`` in the channel and start a public thread named ``title`` from it."""
        channel = await self._channel(channel_id)
        if isinstance(channel, discord.Thread):
            raise InvalidRequest("a thread cannot be started inside a thread", field="channel")
        starter = await channel.send(_clip(text))
        thread = await starter.create_thread(
            name=_clip(title, MAX_THREAD_NAME_CHARS),
            auto_archive_duration=THREAD_ARCHIVE_MINUTES,
        )
        self._threads[thread.id] = thread
        return MessageRef(str(channel.id), str(starter.id), thread_id=str(thread.id))

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        return await self.send_message(thread_id, text)

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        """Edit a message by id, without fetching it first (one PATCH)."""
        channel = await self._channel(ref.channel_id)
        await channel.get_partial_message(int(ref.message_id)).edit(content=_clip(text))

    async def _channel(self, channel_id: str) -> _Postable:
        try:
            key = int(channel_id)
        except ValueError:
            raise InvalidRequest(
                f"{channel_id!r} is not a Discord channel id", field="channel"
            ) from None
        found: Any = self._threads.get(key) or self.client.get_channel(key)
        if found is None:
            found = await self.client.fetch_channel(key)
            if isinstance(found, discord.Thread):
                self._threads[key] = found
        if not isinstance(found, discord.TextChannel | discord.Thread):
            raise InvalidRequest(
                f"Discord channel {channel_id} is a {type(found).__name__}, not a text channel "
                "or a thread",
                field="channel",
            )
        return found
