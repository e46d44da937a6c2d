"""The console chat provider: a local REPL on text streams (``stitchwork chat``).

Each input line is one command, in the same grammar as the other platforms; the ``@stitch``
mention is optional. Everything the bot posts is printed: channel messages as
``stitch: <text>``, thread messages as ``stitch [<thread title>]: <text>``, edits with
``(update)``. There is one channel, ``console``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from itertools import count
from typing import TextIO

import structlog

from stitchwork.chat.base import ChatUser, CommandCallback, IncomingMessage, MessageRef

__all__ = ["CONSOLE_CHANNEL", "ConsoleChatProvider"]

log = structlog.get_logger(__name__)

CONSOLE_CHANNEL = "console"
_LEAVE = frozenset({"exit", "quit", ":q"})


class ConsoleChatProvider:
    """Reads commands from ``stdin`` and prints the bot's messages to ``stdout``.

    Lines are read on a daemon thread (a blocking read must never hold the event loop, nor
    keep the process alive after the REPL is left) and handled one at a time, in order.
    ``closed`` is set at end of input or after ``exit``/``quit``.
    """

    name = "console"
    direct = True  # every line is a command: the mention is optional

    def __init__(
        self,
        stdin: TextIO,
        stdout: TextIO,
        *,
        user: ChatUser,
        bot_name: str = "stitch",
        channel_id: str = CONSOLE_CHANNEL,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.user = user
        self.bot_name = bot_name
        self.channel_id = channel_id
        self.closed = asyncio.Event()
        self._callbacks: list[CommandCallback] = []
        self._threads: dict[str, str] = {}  # thread id -> title
        self._ids = count(1)
        self._consumer: asyncio.Task[None] | None = None
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()

    def on_command(self, callback: CommandCallback) -> None:
        self._callbacks.append(callback)

    async def connect(self) -> None:
        if self._consumer is not None:
            return
        loop = asyncio.get_running_loop()
        reader = threading.Thread(
            target=self._read, args=(loop,), name="console-chat-reader", daemon=True
        )
        reader.start()
        self._consumer = asyncio.create_task(self._consume(), name="console-chat")

    async def disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        self.closed.set()

    def is_connected(self) -> bool:
        return self._consumer is not None and not self.closed.is_set()

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        self._print(f"{self.bot_name}: ", text)
        return MessageRef(channel_id, self._new_id("m"))

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        thread_id = self._new_id("thread-")
        self._threads[thread_id] = title
        self._print(f"{self.bot_name} [{title}]: ", text)
        return MessageRef(channel_id, self._new_id("m"), thread_id=thread_id)

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        self._print(f"{self.bot_name} [{self._title(thread_id)}]: ", text)
        return MessageRef(self.channel_id, self._new_id("m"), thread_id=thread_id)

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        where = f" [{self._title(ref.thread_id)}]" if ref.thread_id else ""
        self._print(f"{self.bot_name}{where} (update): ", text)

    # -- internals ----------------------------------------------------------------------------

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for line in iter(self.stdin.readline, ""):
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
        except (OSError, ValueError):  # the stream was closed under us: same as end of input
            log.debug("console_chat_input_closed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def _consume(self) -> None:
        try:
            while (line := await self._lines.get()) is not None:
                text = line.strip()
                if not text:
                    continue
                if text.lower() in _LEAVE:
                    break
                message = IncomingMessage(self.user, self.channel_id, text)
                for callback in self._callbacks:
                    await callback(message)
        finally:
            self.closed.set()

    def _title(self, thread_id: str | None) -> str:
        return self._threads.get(thread_id or "", thread_id or "thread")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _print(self, lead: str, text: str) -> None:
        indent = " " * len(lead)
        lines = text.splitlines() or [""]
        out = lead + lines[0] + "".join(f"\n{indent}{line}" for line in lines[1:])
        try:
            self.stdout.write(out + "\n")
        except UnicodeEncodeError:  # a terminal without emoji: say it without them
            encoding = getattr(self.stdout, "encoding", None) or "ascii"
            self.stdout.write(out.encode(encoding, "replace").decode(encoding) + "\n")
        self.stdout.flush()
