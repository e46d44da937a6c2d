"""One chat provider wired to an engine: its bridge (commands in) and its herald (status out).

The console command, the Discord command and the API's Slack endpoint all build a
``ChatSession``; ``run`` connects the provider and runs the herald until cancelled.
"""

from __future__ import annotations

import asyncio

import structlog

from stitchwork.chat.access import ChatAccess
from stitchwork.chat.base import ChatProvider
from stitchwork.chat.bridge import ChatBridge
from stitchwork.clock import Clock
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.herald import ChatRate, Herald

__all__ = ["ChatSession"]

log = structlog.get_logger(__name__)


class ChatSession:
    """A provider, the bridge answering its commands and the herald posting to it."""

    def __init__(
        self,
        engine: Engine,
        provider: ChatProvider,
        *,
        access: ChatAccess | None = None,
        default_channel: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        settings = engine.settings
        self.engine = engine
        self.provider = provider
        self.herald = Herald(
            engine.bus,
            engine.store,
            provider,
            routes=settings.chat_routes,
            default_channel=default_channel or settings.chat_default_channel,
            rate=ChatRate(settings.chat_rate_messages, settings.chat_rate_window_s),
            clock=clock or engine.clock,
        )
        self.bridge = ChatBridge(
            provider,
            engine.jobs,
            engine.auth,
            settings,
            herald=self.herald,
            access=access,
            clock=clock or engine.clock,
        )
        self.bridge.attach()

    async def run(self) -> None:
        """Connect the provider, then run the herald until cancelled; disconnect on the way
        out."""
        herald = asyncio.create_task(self.herald.run(), name="herald")
        try:
            await self.provider.connect()
            log.info("chat_connected", provider=self.provider.name)
            await herald
        finally:
            herald.cancel()
            await asyncio.gather(herald, return_exceptions=True)
            await self.provider.disconnect()
