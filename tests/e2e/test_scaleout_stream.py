"""Scale-out streaming with real processes on Postgres: an API process (``serve --no-worker``)
and a separate ``stitchwork worker``, their events crossing over the bus ``bus_url`` selects
(Redis pub/sub or Postgres LISTEN/NOTIFY), with the SQL queue or BullMQ.

The API process's database safety net is turned down (catch-up every 5 minutes, SSE pings
every 15 s), so a stream can only keep up through the bus: a stream that stalls once the job
completed in the database fails the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import httpx
import pytest

from tests.conftest import REDIS_URL, drop_redis_prefix, require_redis
from tests.e2e.test_stream_restart import _read_while_the_job_runs, _ready, _seqs, _stop
from tests.sse import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

Spawn = Callable[..., Popen[bytes]]


@pytest.fixture(
    params=[  # each bus once, each queue once (the Redis bus with the SQL queue adds nothing)
        pytest.param(("redis", "bullmq"), marks=pytest.mark.redis, id="redis-bus-bullmq"),
        pytest.param(("postgres", "sql"), id="postgres-bus-sql-queue"),
    ]
)
def scaleout_env(request: pytest.FixtureRequest, database_url: str) -> Iterator[dict[str, str]]:
    bus, queue = request.param
    fresh = f"swe2e{uuid.uuid4().hex[:10]}"
    env = {
        # The bus is the only live path: the database catch-up runs every 5 x 60 s.
        "STITCHWORK_EVENT_TAIL_INTERVAL": "60",
        "STITCHWORK_SSE_PING_INTERVAL": "15",
    }
    if bus == "redis" or queue == "bullmq":
        require_redis()
    if bus == "redis":
        env["STITCHWORK_BUS_URL"] = f"{REDIS_URL}?prefix={fresh}"
    else:  # the test's own database: its notifications reach no other test
        env["STITCHWORK_BUS_URL"] = database_url.replace("+asyncpg", "")
    if queue == "bullmq":
        env |= {"STITCHWORK_QUEUE_URL": REDIS_URL, "STITCHWORK_BULLMQ_PREFIX": fresh}
    try:
        yield env
    finally:
        if queue == "bullmq":
            drop_redis_prefix(fresh)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_sse_on_an_api_process_follows_a_worker_process_across_an_api_restart(
    spawn: Spawn, tmp_path: Path, scaleout_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = spawn("serve", "--no-worker", "--port", str(port), **scaleout_env)
    spawn("worker", **scaleout_env)
    key = await _ready(url, first, data_dir)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as client:

        async def submit(count: int, rate_per_s: int) -> str:
            response = await client.post(
                "/api/v1/jobs",
                json={"type": "emit", "payload": {"count": count, "rate_per_s": rate_per_s}},
            )
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        async def stored_seqs(job_id: str) -> list[int]:
            events = (await client.get(f"/api/v1/jobs/{job_id}/events")).json()
            return [e["seq"] for e in events]

        # A whole job run by the worker process, streamed live by the API process.
        whole = await submit(60, 60)
        frames = await _read_while_the_job_runs(
            client, whole, lambda f: f.event == "stream.complete"
        )
        seqs = await stored_seqs(whole)
        assert seqs == list(range(1, len(seqs) + 1))
        assert _seqs(frames) == seqs
        assert sum(f.event == "step.output" for f in frames) == 60

        # The API process restarts while a job streams: the client resumes with Last-Event-ID.
        job = await submit(100, 50)
        before = await _read_while_the_job_runs(
            client, job, lambda f: f.event == "step.output" and int(f.id or 0) >= 15
        )
        assert await _stop(first) == 0
        second = spawn("serve", "--no-worker", "--port", str(port), **scaleout_env)
        assert await _ready(url, second, data_dir) == key
        last = _seqs(before)[-1]
        after = await _read_while_the_job_runs(
            client,
            job,
            lambda f: f.event == "stream.complete",
            headers={"Last-Event-ID": str(last)},
        )
        seqs = await stored_seqs(job)
        assert await _stop(second) == 0

    assert seqs == list(range(1, len(seqs) + 1))
    assert _seqs(before) == list(range(1, last + 1))
    assert _seqs(before) + _seqs(after) == seqs
    assert sum(f.event == "step.output" for f in before + after) == 100
    assert after[-1].event == "stream.complete"
