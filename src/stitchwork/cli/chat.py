"""``stitchwork chat``: talk to stitchwork as a chat bot, in the terminal or on Discord.

The command runs an engine in this process (like ``stitchwork serve`` without the API): a
worker, the lease sweeper, the event relay (jobs run by other workers are followed too), the
chat provider, its bridge and the herald.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from stitchwork.cli.common import load_settings, run
from stitchwork.cli.logs import configure_logging
from stitchwork.cli.output import fail

if TYPE_CHECKING:
    from stitchwork.chat.base import ChatProvider
    from stitchwork.chat.session import ChatSession
    from stitchwork.config import Settings
    from stitchwork.runtime.engine import Engine


class ProviderName(StrEnum):
    CONSOLE = "console"
    DISCORD = "discord"


def chat(
    provider: Annotated[
        ProviderName,
        typer.Option(
            "--provider",
            help="console: a REPL in this terminal. discord: the bot in the control channel "
            "(STITCHWORK_DISCORD_TOKEN, _GUILD_ID, _CHANNEL_ID). Slack and Mattermost talk "
            "to `stitchwork serve` instead (see docs/chat.md).",
        ),
    ] = ProviderName.CONSOLE,
    workspace: Annotated[
        str, typer.Option(help="Console: the workspace your commands act on.")
    ] = "default",
    user: Annotated[
        str | None, typer.Option(help="Console: your name in chat (default: your login).")
    ] = None,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Run no worker here; jobs run elsewhere.")
    ] = False,
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level of the messages on stderr.")] = (
        "warning"
    ),
) -> None:
    """Control stitchwork with chat commands: fix #42, status, cancel, retry, verbose, quiet,
    jobs, help.

    With the console provider (the default) each line you type is a command ("fix #42",
    "status #42", "help"; the @stitch mention is optional) and job updates are printed as the
    jobs run. #42 means the repository STITCHWORK_CHAT_CHANNEL_REPOS gives the channel
    "console" (or "*"); STITCHWORK_CHAT_REPOS says where each repository is checked out.
    Leave with Ctrl+D, "exit" or Ctrl+C; running jobs go back to the queue after
    STITCHWORK_SHUTDOWN_GRACE.
    """
    settings = load_settings(worker_concurrency=concurrency)
    configure_logging(log_level)
    if provider is ProviderName.DISCORD and not (
        settings.discord_token and settings.discord_guild_id and settings.discord_channel_id
    ):
        fail(
            "the Discord provider needs STITCHWORK_DISCORD_TOKEN, STITCHWORK_DISCORD_GUILD_ID "
            "and STITCHWORK_DISCORD_CHANNEL_ID",
            code=2,
        )
    run(
        run_chat(
            settings,
            provider,
            workspace=workspace,
            user=user or getpass.getuser(),
            with_worker=not no_worker,
            stdin=sys.stdin,
            stdout=sys.stdout,
        )
    )


async def run_chat(
    settings: Settings,
    provider_name: ProviderName,
    *,
    workspace: str,
    user: str,
    with_worker: bool,
    stdin: TextIO,
    stdout: TextIO,
) -> None:
    """Run the engine and the chat until the console's input ends or SIGINT/SIGTERM."""
    from stitchwork.chat.access import ALL_ACTIONS, ChatAccess, Grant
    from stitchwork.chat.base import ChatUser
    from stitchwork.chat.console import CONSOLE_CHANNEL, ConsoleChatProvider
    from stitchwork.chat.session import ChatSession
    from stitchwork.runtime.engine import open_engine

    access = ChatAccess(settings.chat_users)
    stop = asyncio.Event()
    async with open_engine(settings) as engine:
        provider: ChatProvider
        if provider_name is ProviderName.CONSOLE:
            # The person at this terminal can open the database anyway: trust them.
            access = access.with_default(f"console:{user}", Grant(workspace, ALL_ACTIONS))
            console = ConsoleChatProvider(
                stdin,
                stdout,
                user=ChatUser("console", user, user),
                bot_name=settings.chat_bot_name,
            )
            provider = console
            stdout.write(
                "stitchwork chat: type commands such as 'fix #42', 'status #42' or 'help'. "
                "Leave with Ctrl+D or 'exit'.\n"
            )
            stdout.flush()
            closed: asyncio.Event = console.closed
        else:
            from stitchwork.chat.discord import DiscordChatProvider

            provider = DiscordChatProvider.from_settings(settings)
            closed = asyncio.Event()  # the bot runs until a signal
        session = ChatSession(
            engine,
            provider,
            access=access,
            default_channel=CONSOLE_CHANNEL if provider_name is ProviderName.CONSOLE else None,
        )
        await _run_until(engine, session, closed, stop, with_worker=with_worker)


async def _run_until(
    engine: Engine,
    session: ChatSession,
    closed: asyncio.Event,
    stop: asyncio.Event,
    *,
    with_worker: bool,
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await engine.prepare_host()
    worker = engine.worker() if with_worker else None
    loops = [
        asyncio.create_task(session.run(), name="chat"),
        # Events of jobs run by other processes, as STITCHWORK_BUS_URL says.
        asyncio.create_task(engine.relay.receive(), name="event-relay"),
        asyncio.create_task(engine.sweeper().run(), name="sweeper"),
        asyncio.create_task(engine.reconciler().run(), name="reconciler"),
    ]
    worker_task = asyncio.create_task(worker.run(), name="worker") if worker else None
    waits = [asyncio.create_task(closed.wait()), asyncio.create_task(stop.wait()), loops[0]]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if worker is not None and worker_task is not None:
            worker.stop()  # running jobs get the shutdown grace; the herald still reports
            await asyncio.gather(worker_task, return_exceptions=True)
        for task in [*loops, *waits]:
            task.cancel()
        results = await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*waits, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    failure = next((r for r in results if isinstance(r, Exception)), None)
    if failure is not None:
        raise failure
