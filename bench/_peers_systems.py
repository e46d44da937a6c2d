"""The worker and producer processes of ``bench/peers.py``: one no-op job per system.

``python bench/_peers_systems.py worker|produce SYSTEM --redis-url ... --name ...``

Only the standard library is imported at the top, and each system's library inside its own
functions, so the arq virtual environment (arq and its ``redis<6``, nothing else) runs this file
too. Every peer's job records ``phase enqueued started finished`` (``time.time()``, one clock on
one machine) through ``Recorder``; stitchwork's no-op job records nothing, its database does.
A producer prints one JSON line: when it started enqueueing, how long it took, how many jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

READY = "PEERS-WORKER-READY"
RECORD_URL_ENV = "PEERS_RECORD_URL"
RECORD_KEY_ENV = "PEERS_RECORD_KEY"
FLUSH_INTERVAL_S = 0.02
ENQUEUE_CONCURRENCY = 20  # in flight at once where a library has no bulk call (saq's own limit)
BULLMQ_QUEUE = "peers"
CELERY_TASK = "peers.noop"
RQ_FUNC = "_peers_systems.rq_noop"


class Recorder:
    """Appends each job's record to a Redis list from a background thread, in batches: a job
    costs a deque append, not a Redis round trip, on every peer alike."""

    def __init__(self, url: str, key: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self._key = key
        self._items: collections.deque[str] = collections.deque()
        threading.Thread(target=self._flush_forever, daemon=True, name="recorder").start()

    def record(self, phase: str, enqueued: float, started: float) -> None:
        self._items.append(f"{phase} {enqueued!r} {started!r} {time.time()!r}")

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            batch = []
            while self._items:
                batch.append(self._items.popleft())
            if batch:
                self._client.rpush(self._key, *batch)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()


def record(phase: str, enqueued: float, started: float) -> None:
    global _recorder  # one per worker process, made by its first job
    if _recorder is None:
        with _recorder_lock:
            if _recorder is None:
                _recorder = Recorder(os.environ[RECORD_URL_ENV], os.environ[RECORD_KEY_ENV])
    _recorder.record(phase, enqueued, started)


def ready() -> None:
    print(READY, flush=True)


# -- the jobs ---------------------------------------------------------------------------------


async def bullmq_noop(job: Any, token: str) -> None:
    record(job.data["phase"], job.data["enq"], time.time())


async def saq_noop(ctx: Any, *, phase: str, enq: float) -> None:
    record(phase, enq, time.time())


async def arq_noop(ctx: Any, phase: str, enq: float) -> None:
    record(phase, enq, time.time())


def rq_noop(phase: str, enq: float) -> None:
    record(phase, enq, time.time())


def celery_app(args: argparse.Namespace) -> Any:
    from celery import Celery

    app = Celery("peers", broker=args.redis_url, set_as_current=True)
    app.conf.update(
        task_default_queue=args.name,
        task_ignore_result=True,  # no result backend: nothing else measured has one either
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=CELERY_TASK)  # type: ignore[untyped-decorator, unused-ignore]
    def noop(phase: str, enq: float) -> None:
        record(phase, enq, time.time())

    return app


# -- workers: run until SIGTERM ---------------------------------------------------------------


async def until_signalled() -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def bullmq_worker(args: argparse.Namespace) -> None:
    from bullmq import Worker

    opts = {"connection": args.redis_url, "prefix": args.name, "concurrency": args.concurrency}
    worker = Worker(BULLMQ_QUEUE, bullmq_noop, opts)  # type: ignore[arg-type]
    ready()
    await until_signalled()
    await worker.close()


async def saq_worker(args: argparse.Namespace) -> None:
    from saq import Queue, Worker

    queue = Queue.from_url(args.redis_url, name=args.name)
    worker = Worker(queue, functions=[saq_noop], concurrency=args.concurrency)
    ready()
    await worker.start()  # returns on SIGTERM/SIGINT (saq installs the handlers)
    await queue.disconnect()


async def arq_worker(args: argparse.Namespace) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    worker = Worker(
        functions=[func(arq_noop, name="noop")],
        redis_settings=RedisSettings.from_dsn(args.redis_url),
        queue_name=args.name,
        max_jobs=args.concurrency,
    )  # arq's own SIGTERM handler cancels its main task
    ready()
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


def rq_worker(args: argparse.Namespace) -> None:
    from redis import Redis
    from rq import Queue, SimpleWorker

    connection = Redis.from_url(args.redis_url)
    worker = SimpleWorker([Queue(args.name, connection=connection)], connection=connection)
    ready()
    worker.work(logging_level="WARNING")  # per-job INFO lines otherwise; RQ handles SIGTERM


def celery_worker(args: argparse.Namespace) -> None:
    from celery.signals import worker_ready

    app = celery_app(args)
    worker_ready.connect(lambda **_: ready(), weak=False)
    app.worker_main(
        [
            "worker",
            f"--pool={args.celery_pool}",
            f"--concurrency={args.concurrency}",
            "--loglevel=WARNING",
            f"--queues={args.name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


# -- producers --------------------------------------------------------------------------------

Enqueue = Callable[[str, int], Awaitable[None]]  # (phase, how many jobs): one call


async def bounded(coros: list[Coroutine[Any, Any, Any]]) -> None:
    sem = asyncio.Semaphore(ENQUEUE_CONCURRENCY)

    async def one(coro: Coroutine[Any, Any, Any]) -> None:
        async with sem:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def bullmq_producer(args: argparse.Namespace) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    from bullmq import Queue

    queue = Queue(BULLMQ_QUEUE, {"connection": args.redis_url, "prefix": args.name})

    async def enqueue(phase: str, count: int) -> None:
        data = {"phase": phase, "enq": time.time()}
        if count == 1:
            await queue.add("noop", data)
        else:
            await queue.addBulk([{"name": "noop", "data": dict(data)} for _ in range(count)])

    return enqueue, queue.close


async def saq_producer(args: argparse.Namespace) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    from saq import Queue

    queue = Queue.from_url(args.redis_url, name=args.name)
    await queue.connect()

    async def enqueue(phase: str, count: int) -> None:
        enq = time.time()
        await bounded([queue.enqueue("saq_noop", phase=phase, enq=enq) for _ in range(count)])

    return enqueue, queue.disconnect


async def arq_producer(args: argparse.Namespace) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(args.redis_url), default_queue_name=args.name)

    async def enqueue(phase: str, count: int) -> None:
        enq = time.time()
        await bounded([pool.enqueue_job("noop", phase, enq) for _ in range(count)])

    return enqueue, pool.aclose if hasattr(pool, "aclose") else pool.close


async def rq_producer(args: argparse.Namespace) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    from redis import Redis
    from rq import Queue

    queue = Queue(args.name, connection=Redis.from_url(args.redis_url))

    async def enqueue(phase: str, count: int) -> None:
        enq = time.time()
        if count == 1:
            queue.enqueue(RQ_FUNC, phase, enq)
        else:
            queue.enqueue_many([Queue.prepare_data(RQ_FUNC, (phase, enq)) for _ in range(count)])

    async def close() -> None:
        queue.connection.close()

    return enqueue, close


async def celery_producer(args: argparse.Namespace) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    app = celery_app(args)

    async def enqueue(phase: str, count: int) -> None:
        enq = time.time()
        for _ in range(count):  # no bulk publish in Celery
            app.send_task(CELERY_TASK, args=(phase, enq), queue=args.name)

    async def close() -> None:
        app.close()

    return enqueue, close


async def stitchwork_producer(
    args: argparse.Namespace,
) -> tuple[Enqueue, Callable[[], Awaitable[Any]]]:
    """Jobs go in through ``JobService.submit_many`` (``submit`` one at a time), as the API's
    handlers call it, without the HTTP layer."""
    from stitchwork.config import Settings
    from stitchwork.domain.jobs import NewJob
    from stitchwork.runtime.engine import Engine

    settings = Settings(
        database_url=args.database_url, queue_url=args.redis_url, bullmq_prefix=args.name
    )
    engine = await Engine.open(settings, migrate=False)
    workspace, _ = await engine.auth.ensure_workspace("default")

    async def enqueue(phase: str, count: int) -> None:
        payload = {"phase": phase, "enq": time.time()}
        if count == 1:
            await engine.jobs.submit(workspace.id, NewJob("noop", payload), actor="bench")
        else:
            jobs = [NewJob("noop", payload)] * count
            await engine.jobs.submit_many(workspace.id, jobs, actor="bench")

    return enqueue, engine.close


PRODUCERS = {
    "stitchwork": stitchwork_producer,
    "bullmq": bullmq_producer,
    "saq": saq_producer,
    "arq": arq_producer,
    "rq": rq_producer,
    "celery": celery_producer,
}
WORKERS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "bullmq": bullmq_worker,
    "saq": saq_worker,
    "arq": arq_worker,
    "rq": rq_worker,
    "celery": celery_worker,
}


async def produce(args: argparse.Namespace) -> None:
    """Bulk: ``--jobs`` in calls of ``--batch-size``. Rate: one job at a time, each at its own
    fixed time, ``--rate`` per second for ``--seconds``."""
    enqueue, close = await PRODUCERS[args.system](args)
    try:
        loop = asyncio.get_running_loop()
        if args.rate:
            count = max(1, round(args.rate * args.seconds))
            first = time.time()
            start = loop.time()
            for i in range(count):
                delay = start + i / args.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await enqueue(args.phase, 1)
        else:
            count = args.jobs
            first = time.time()
            start = loop.time()
            for i in range(0, count, args.batch_size):
                await enqueue(args.phase, min(args.batch_size, count - i))
        elapsed = loop.time() - start
    finally:
        await close()
    print(json.dumps({"first_enqueue": first, "enqueue_s": elapsed, "jobs": count}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("role", choices=["worker", "produce"])
    parser.add_argument("system", choices=sorted(PRODUCERS))
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", required=True, help="key prefix or queue name")
    parser.add_argument("--database-url", help="stitchwork only")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--celery-pool", default="threads")
    parser.add_argument("--phase", default="bulk")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.role == "produce":
        asyncio.run(produce(args))
        return
    if args.system not in WORKERS:
        raise SystemExit(f"{args.system} workers are `stitchwork worker` processes")
    run = WORKERS[args.system]
    if asyncio.iscoroutinefunction(run):
        asyncio.run(run(args))
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
