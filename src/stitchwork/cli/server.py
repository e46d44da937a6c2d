"""Run the API (uvicorn), a worker, the lease sweeper and the execution scheduler in one
process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn

from stitchwork.api.app import create_app
from stitchwork.runtime.engine import Engine
from stitchwork.runtime.worker import Worker

API_SHUTDOWN_GRACE_S = 3


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns SIGTERM/SIGINT and shuts
    the worker down gracefully alongside the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Running:
    url: str
    server: uvicorn.Server
    worker: Worker | None

    def stop(self) -> None:
        self.server.should_exit = True
        if self.worker is not None:
            self.worker.stop()


@asynccontextmanager
async def run_embedded(
    engine: Engine, *, host: str, port: int, with_worker: bool = True
) -> AsyncIterator[Running]:
    """Start the API (+ worker), sweeper and scheduler; yields once the server listens;
    stops all on exit."""
    app = create_app(engine)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        # Event streams never finish on their own: without a bound, shutdown would wait for
        # them forever. Their clients reconnect with Last-Event-ID and lose nothing.
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE_S,
    )
    server = _EmbeddedServer(config)
    await engine.prepare_host()
    worker = engine.worker() if with_worker else None
    tasks = [asyncio.create_task(server.serve(), name="api")]
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run(), name="worker"))
    loops = [  # run until cancelled
        # Events committed by other processes (workers) reach this process's streams.
        asyncio.create_task(engine.relay.receive(), name="event-relay"),
        asyncio.create_task(engine.sweeper().run(), name="sweeper"),
        asyncio.create_task(engine.reconciler().run(), name="reconciler"),
        asyncio.create_task(engine.scheduler().run(), name="scheduler"),
    ]
    chat = getattr(app.state, "chat", None)  # Slack/Mattermost, when configured: its herald
    if chat is not None:
        loops.append(asyncio.create_task(chat.run(), name="chat"))
    try:
        while not server.started:
            if tasks[0].done():  # failed to bind: surface the error
                await tasks[0]
                raise OSError(f"could not listen on {host}:{port}")
            await asyncio.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()
        running = Running(url=f"http://{host}:{bound[1]}", server=server, worker=worker)
        yield running
    finally:
        engine.bus.close()  # event streams end their responses instead of holding shutdown
        server.should_exit = True
        if worker is not None:
            worker.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
