"""The chat port: what the bridge and the herald need from a chat platform.

A provider delivers the messages addressed to the bot to one callback and posts text to
channels and threads. Adapters (console, Slack/Mattermost-compatible webhooks, Discord) live
next to this module; only the composition root names them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ChatProvider",
    "ChatUser",
    "CommandCallback",
    "IncomingMessage",
    "MessageRef",
]


@dataclass(frozen=True, slots=True)
class ChatUser:
    """Who wrote a message: ``platform`` ("discord", "slack"...), its id there, a display name
    and the platform roles used to authorise it."""

    platform: str
    user_id: str
    name: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message addressed to the bot; ``thread_id`` is set when it was written in a thread."""

    user: ChatUser
    channel_id: str
    text: str
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message the bot posted, to edit later; ``thread_id`` is the thread it is in (or, for
    ``create_thread``, the thread it started)."""

    channel_id: str
    message_id: str
    thread_id: str | None = None


CommandCallback = Callable[[IncomingMessage], Awaitable[None]]


class ChatProvider(Protocol):
    """A chat platform as the bridge and the herald see it."""

    name: str  # "console", "slack", "discord"...

    async def connect(self) -> None:
        """Start receiving messages (log in, open the socket or the local REPL)."""
        ...

    async def disconnect(self) -> None:
        """Stop receiving messages and release the connection."""
        ...

    def is_connected(self) -> bool: ...

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        """Post ``text`` to a channel."""
        ...

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        """Start a thread named ``title`` in a channel with ``text`` as its first message; the
        returned ref has ``thread_id`` set."""
        ...

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        """Post ``text`` to a thread."""
        ...

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        """Replace the text of a message the bot posted."""
        ...

    def on_command(self, callback: CommandCallback) -> None:
        """Call ``callback`` for every message addressed to the bot."""
        ...
