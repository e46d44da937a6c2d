"""The cross-process event bus contract, on every relay: the database tail (SQLite and
Postgres), Redis pub/sub and Postgres LISTEN/NOTIFY.

Two engines on one database stand in for two processes (each has its own pools, in-process bus
and relay): A receives, like an API process; B commits, like a worker. Events committed through
B reach A's subscribers in order, once, without gaps, whatever happens to A's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import pytest

from stitchwork.bus.base import EventFilter, Subscription
from stitchwork.bus.memory import InProcessBus
from stitchwork.bus.postgres import id_payloads, parse_payload
from stitchwork.bus.relay import DbTailRelay, EventLog, create_relay
from stitchwork.bus.remote import RemoteRelay
from stitchwork.domain.events import Event
from stitchwork.domain.jobs import JobStatus, NewJob
from stitchwork.errors import ConfigError
from stitchwork.runtime.engine import Engine
from stitchwork.storage.migrate import upgrade
from tests.conftest import PG_URL, REDIS_URL, Backend, require_redis
from tests.contract.helpers import default_workspace, running_worker, wait_for_status, wait_until

TAIL = timedelta(milliseconds=100)  # the pub/sub relays check (and catch up) every 0.5 s
PG_PLAIN_URL = PG_URL.replace("+asyncpg", "")
DB_TAIL = ["db-sqlite", pytest.param("db-postgres", marks=pytest.mark.postgres)]
REMOTE = [
    pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres]),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@dataclass
class Case:
    name: str
    backend: Backend
    bus_url: str

    async def open(self, *, migrate: bool = True, **overrides: Any) -> Engine:
        values = {"bus_url": self.bus_url, "event_tail_interval": TAIL, **overrides}
        settings = self.backend.settings(**values)
        return await Engine.open(settings, migrate=migrate, search_path=self.backend.search_path)

    def through(self, port: int) -> dict[str, Any]:
        """Settings that reach this case's remote (database or bus) on ``port`` instead."""
        if self.name == "db-postgres":
            return {"database_url": _with_port(self.backend.database_url, port)}
        return {"bus_url": _with_port(self.bus_url, port)}


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition(':')[0]}:{port}"))


@pytest.fixture(params=[*DB_TAIL, *REMOTE])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    name: str = request.param
    if name == "db-sqlite":
        yield Case(name, Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'bus.db'}"), "db://")
        return
    if name == "redis":
        require_redis()
    backend: Backend = request.getfixturevalue("pg_backend")  # a fresh schema
    fresh = uuid.uuid4().hex[:12]
    yield Case(
        name,
        backend,
        {
            "db-postgres": "db://",
            "redis": f"{REDIS_URL}?prefix=swbus{fresh}",  # a channel of its own
            "postgres": f"{PG_PLAIN_URL}?channel=swbus_{fresh}",
        }[name],
    )


@dataclass
class Processes:
    a: Engine  # receives, like an API process
    b: Engine  # commits and sends, like a worker process
    ws: UUID


@contextlib.asynccontextmanager
async def receiving(engine: Engine) -> AsyncIterator[None]:
    """``engine``'s relay receiving (as ``stitchwork serve`` runs it), once it is connected."""
    task = asyncio.create_task(engine.relay.receive())

    async def connected() -> bool:
        assert not task.done(), task
        return bool(engine.relay.status()["receive"]["connected"])

    try:
        await wait_until(connected, what="the relay to connect")
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def procs(case: Case) -> AsyncIterator[Processes]:
    a = await case.open()
    b = await case.open()
    try:
        async with receiving(a):
            yield Processes(a, b, await default_workspace(b))
    finally:
        await b.close()
        await a.close()


async def _submit(engine: Engine, ws: UUID, type_: str = "emit", **payload: Any) -> UUID:
    return (await engine.jobs.submit(ws, NewJob(type_, payload), actor="test")).job.id


async def _until(sub: Subscription, done: Callable[[list[Event]], bool]) -> list[Event]:
    got: list[Event] = []
    try:
        async with asyncio.timeout(30):
            while not done(got):
                got += await sub.get_batch(timeout_s=1)
    except TimeoutError:
        raise AssertionError(f"timed out; received {[(e.seq, e.type) for e in got]}") from None
    return got


async def _until_done(sub: Subscription, jobs: list[UUID]) -> list[Event]:
    def finished(got: list[Event]) -> bool:
        return {e.job_id for e in got if e.is_job_terminal} >= set(jobs)

    return await _until(sub, finished)


async def _drain(sub: Subscription) -> list[Event]:
    return await sub.get_batch(timeout_s=0)


async def _assert_per_job(engine: Engine, got: list[Event], jobs: list[UUID]) -> None:
    """Each job's events arrived exactly as stored: all, once, in seq order, intact."""
    for job in jobs:
        assert [e for e in got if e.job_id == job] == await engine.store.list_events(
            job, limit=100_000
        )
    assert {e.job_id for e in got} <= set(jobs)


async def test_events_committed_by_another_process_reach_a_subscriber_once_in_order(
    case: Case, procs: Processes
) -> None:
    a, b, ws = procs.a, procs.b, procs.ws
    sub = a.bus.subscribe(EventFilter(workspace_id=ws))
    async with running_worker(b, concurrency=3):
        jobs = [await _submit(b, ws, count=60, batch=7) for _ in range(2)]
        # One transaction of 1,000 events: several relay messages (NOTIFY payload chunks).
        jobs.append(await _submit(b, ws, count=1000, batch=1000))
        got = await _until_done(sub, jobs)

    await _assert_per_job(b, got, jobs)
    status = a.relay.status()
    assert status["connected"] is True
    assert status["backend"] == {"db-sqlite": "db", "db-postgres": "db"}.get(case.name, case.name)
    if case.name in {"redis", "postgres"}:
        assert status["received"] > status["backfilled"]  # delivered live, not only by catch-up
        total = sum([len(await b.store.list_events(j, limit=100_000)) for j in jobs])

        async def all_sent() -> bool:
            return bool(b.relay.status()["sent"] == total)

        await wait_until(all_sent, what="B to have sent each event once")


async def test_filters_apply_to_events_of_another_process(procs: Processes) -> None:
    a, b, ws = procs.a, procs.b, procs.ws
    first, second = await _submit(b, ws, count=5), await _submit(b, ws, count=5)
    queued = (await b.store.list_events(second))[-1]

    async def arrived() -> bool:
        return a.bus.was_published(queued.id)

    await wait_until(arrived, what="the jobs' first events to reach A")
    only_second = a.bus.subscribe(EventFilter(job_id=second))
    outputs = a.bus.subscribe(EventFilter(workspace_id=ws, types=("step.output",)))
    statuses = a.bus.subscribe(EventFilter(workspace_id=ws, types=("job.*",)))
    everything = a.bus.subscribe(EventFilter(workspace_id=ws))
    async with running_worker(b, concurrency=2):
        got = await _until_done(everything, [first, second])

    assert await _drain(only_second) == (await b.store.list_events(second))[2:]
    assert await _drain(outputs) == [e for e in got if e.type == "step.output"]
    assert len([e for e in got if e.type == "step.output"]) == 10
    assert await _drain(statuses) == [e for e in got if e.type.startswith("job.")]


async def _kill_receiver(case: Case, engine: Engine) -> None:
    relay = cast(Any, engine.relay)
    if case.name == "redis":
        from redis.asyncio import Redis

        admin = Redis.from_url(REDIS_URL)
        try:
            name = f"{relay.client_name}-recv"
            (client,) = [c for c in await admin.client_list() if c.get("name") == name]
            assert await admin.client_kill_filter(_id=client["id"]) == 1
        finally:
            await admin.aclose()
    else:
        import asyncpg  # type: ignore[import-untyped]

        admin = await asyncpg.connect(PG_PLAIN_URL)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                f"{relay.application_name}-recv",
            )
            assert killed == 1
        finally:
            await admin.close()


@pytest.mark.parametrize("case", REMOTE, indirect=True)
async def test_a_receiver_whose_connection_is_killed_delivers_a_gapless_sequence(
    case: Case, procs: Processes
) -> None:
    a, b, ws = procs.a, procs.b, procs.ws
    sub = a.bus.subscribe(EventFilter(workspace_id=ws))
    async with running_worker(b):
        job = await _submit(b, ws, count=150, rate_per_s=100)
        got = await _until(sub, lambda got: sum(e.type == "step.output" for e in got) >= 20)
        await _kill_receiver(case, a)
        got += await _until_done(sub, [job])

    await _assert_per_job(b, got, [job])

    async def reconnected() -> bool:
        status = a.relay.status()
        return bool(status["connected"] and status["receive"]["reconnects"] >= 1)

    await wait_until(reconnected, what="the relay to report its reconnection")
    assert "Error" in (a.relay.status()["receive"]["last_error"] or "")


class Proxy:
    """A TCP proxy a test can cut: open connections are dropped and new ones refused until
    it is restored. ``answer=False``: a remote that accepts connections and never answers."""

    def __init__(self, host: str, port: int, *, answer: bool = True) -> None:
        self.target = (host, port)
        self.answer = answer
        self.up = True
        self.port = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        for writer in list(self._open):
            writer.transport.abort()

    def restore(self) -> None:
        self.up = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        ends = [writer]
        self._open.add(writer)
        try:
            if not self.answer:
                await reader.read()  # until the client gives up
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            ends.append(up_writer)
            self._open.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            return
        finally:
            for end in ends:
                self._open.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def _remote_of(case: Case) -> tuple[str, int]:
    url = case.backend.database_url if case.name == "db-postgres" else case.bus_url
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


@pytest.mark.parametrize("case", [DB_TAIL[1], *REMOTE], indirect=True)
async def test_a_receiver_cut_off_reports_it_and_then_catches_up_without_gaps(
    case: Case,
) -> None:
    async with Proxy(*_remote_of(case)) as proxy:
        a = await case.open(**case.through(proxy.port))
        b = await case.open()
        try:
            async with receiving(a):
                ws = await default_workspace(b)
                sub = a.bus.subscribe(EventFilter(workspace_id=ws))
                jobs = [await _submit(b, ws, "noop")]
                got = await _until(sub, lambda got: len(got) == 2)  # created, queued
                proxy.cut()

                async def disconnected() -> bool:
                    return not a.relay.status()["connected"]

                await wait_until(disconnected, what="the relay to report the outage")
                assert a.relay.status()["last_error"]
                # Committed while A cannot hear: only a catch-up from the database brings them.
                jobs += [await _submit(b, ws, "noop") for _ in range(3)]
                proxy.restore()
                got += await _until(sub, lambda got: len(got) == 6)

                await _assert_per_job(b, got, jobs)
                assert a.relay.status()["connected"] is True
                assert a.relay.status()["reconnects"] >= 1
                assert await _drain(sub) == []  # nothing twice
        finally:
            await b.close()
            await a.close()


@pytest.mark.parametrize("case", DB_TAIL, indirect=True)
async def test_a_database_tail_reports_a_failing_database_until_it_recovers(case: Case) -> None:
    a = await case.open(migrate=False)  # no tables yet: every read fails
    task = asyncio.create_task(a.relay.receive())
    try:

        async def failing() -> bool:
            status = a.relay.status()
            return status["last_error"] is not None and not status["connected"]

        await wait_until(failing, what="the tail to report the failing reads")
        assert "job_events" in a.relay.status()["last_error"]
        await upgrade(a.db)

        async def connected() -> bool:
            return bool(a.relay.status()["connected"])

        await wait_until(connected, what="the tail to recover")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()


@pytest.mark.parametrize("case", REMOTE, indirect=True)
async def test_publishing_never_waits_for_a_remote_that_does_not_answer(case: Case) -> None:
    """The sender is stuck connecting to a server that never answers, so a publish that
    waited for it would never return: each commit still reaches local subscribers at once."""
    async with Proxy(*_remote_of(case), answer=False) as hole:
        b = await case.open(**case.through(hole.port))
        try:
            ws = await default_workspace(b)
            sub = b.bus.subscribe(EventFilter(workspace_id=ws))
            async with asyncio.timeout(20):
                jobs = [await _submit(b, ws, "noop") for _ in range(10)]
            status = b.relay.status()
            await _assert_per_job(b, await _drain(sub), jobs)
        finally:
            async with asyncio.timeout(15):  # nor does shutting down
                await b.close()
    assert (status["sent"], status["pending"]) == (0, 20)
    assert status["send"]["connected"] is False


@pytest.mark.parametrize("case", REMOTE, indirect=True)
async def test_an_event_that_skips_ahead_has_the_gap_read_from_the_database(case: Case) -> None:
    a, b = await case.open(), await case.open()  # A does not receive: the test hands it events
    try:
        ws = await default_workspace(b)
        sub = a.bus.subscribe(EventFilter(workspace_id=ws))
        async with running_worker(b):
            job = await _submit(b, ws, count=5)
            await wait_for_status(b, job, JobStatus.COMPLETED)
        events = await b.store.list_events(job)
        relay = cast(RemoteRelay, a.relay)
        assert await relay.deliver(events[:2]) == 2
        assert await relay.deliver([events[6]]) == 5  # seqs 3..6 read from the database
        assert await relay.deliver(events[3:8]) == 1  # only seq 8 is new
        assert await _drain(sub) == events[:8]
    finally:
        await b.close()
        await a.close()


@pytest.mark.parametrize(
    "url", ["kafka://host:9092", "redis", "db://elsewhere", "amqp://user:s3cret@host/"]
)
def test_an_unknown_bus_url_is_a_config_error_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_relay(url, InProcessBus(), cast(EventLog, None), tail_interval_s=1)
    assert info.value.fields["field"] == "bus_url"
    assert "s3cret" not in str(info.value)


def test_bus_urls_select_the_relay_and_its_channel() -> None:
    log = cast(EventLog, None)
    for url in ("", "db://", " DB:// "):
        assert isinstance(create_relay(url, InProcessBus(), log, tail_interval_s=1), DbTailRelay)
    redis = create_relay("redis://:pw@h:6380/3?prefix=acme", InProcessBus(), log, tail_interval_s=1)
    assert (redis.backend, cast(Any, redis).channel) == ("redis", "acme:3:events")
    assert "pw" not in redis.status()["target"]
    pg = create_relay(
        "postgres://u:pw@h/db", InProcessBus(), log, tail_interval_s=1, search_path="T1"
    )
    assert (pg.backend, cast(Any, pg).channel) == ("postgres", "stitchwork_events_t1")
    assert "pw" not in pg.status()["target"]
    with pytest.raises(ConfigError, match="channel"):
        create_relay("postgresql://h/db?channel=Bad-Name", InProcessBus(), log, tail_interval_s=1)


def test_notify_payloads_stay_under_the_postgres_limit_and_carry_every_id() -> None:
    ids = list(range(10**15, 10**15 + 3000))
    payloads = id_payloads("f" * 32, ids)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert [i for p in payloads for i in parse_payload(p)[1]] == ids
