"""Node BullMQ reads the queue stitchwork wrote: the on-Redis format is BullMQ's own (issue 6).

``tests/node/read_queue.mjs`` runs on Node with the npm ``bullmq`` package pinned in
``tests/node/package.json`` (6.4.0: its Lua scripts are the ones the Python ``bullmq`` 3.4.4
in the venv ships). The packages are installed once into ``tests/node/node_modules``
(gitignored) and reused while ``package.json`` and ``package-lock.json`` are unchanged. Skips
without Redis, ``node`` or ``npm`` locally; fails instead when ``CI=true``.

The install is ``npm install --no-save``, which takes the lockfile's versions and integrity
hashes and never rewrites it, rather than ``npm ci``: the registry this lockfile was made with
serves only the Linux builds of msgpackr's optional native add-on, so the lockfile cannot list
the other platforms' builds, and ``npm ci`` rejects a lockfile that does not list every optional
package (msgpackr falls back to plain JavaScript without the add-on).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest

from stitchwork.domain.jobs import Job, JobStatus, NewJob
from stitchwork.queue.bullmq import bull_priority
from tests.conftest import IN_CI, REDIS_URL, Backend

pytestmark = [pytest.mark.redis, pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
STAMP = NODE_DIR / "node_modules" / ".stitchwork-lock-sha256"
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 60
BULL_QUEUE = "stitchwork.default"  # bullmq_queue_prefix (default) + the default queue


def _unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: this test must run, not skip)")
    pytest.skip(message)


def _lock_digest() -> str:
    text = (NODE_DIR / "package.json").read_bytes() + (NODE_DIR / "package-lock.json").read_bytes()
    return hashlib.sha256(text).hexdigest()


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """Install once per lockfile: later runs find the stamp and skip the install."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the Node BullMQ interoperability test")
    digest = _lock_digest()
    # One installer at a time (parallel test runs share tests/node/node_modules).
    lock_path = Path(tempfile.gettempdir()) / "stitchwork-node-install.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (STAMP.exists() and STAMP.read_text().strip() == digest):
            env = {
                **os.environ,
                # npm's cache and logs go to the temp dir, not the user's home.
                "npm_config_cache": str(Path(tempfile.gettempdir()) / "stitchwork-npm-cache"),
                "npm_config_update_notifier": "false",
            }
            try:
                done = subprocess.run(
                    [npm, "install", "--no-save", "--ignore-scripts", "--no-audit", "--no-fund"],
                    cwd=NODE_DIR,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                _unavailable(f"npm install took more than {NPM_TIMEOUT_S}s")
            if done.returncode != 0:
                _unavailable(f"npm install failed ({done.returncode}): {done.stderr[-2000:]}")
            STAMP.write_text(digest + "\n")
    return Path(node)


async def _read_queue(node: Path, prefix: str, job_id: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        str(node), "read_queue.mjs", "--redis", REDIS_URL, "--prefix", prefix,
        "--queue", BULL_QUEUE, "--job", job_id,
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    assert proc.returncode == 0, f"read_queue.mjs failed: {err.decode()}"
    result: dict[str, Any] = json.loads(out)
    return result


def _pinned_bullmq() -> str:
    version: str = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["bullmq"]
    return version


async def test_node_bullmq_reads_the_jobs_stitchwork_enqueued(
    bullmq_backend: Backend, node_packages: Path
) -> None:
    prefix = bullmq_backend.extra["bullmq_prefix"]
    engine = await bullmq_backend.open_engine()
    try:
        ws, _ = await engine.auth.ensure_workspace("default")

        async def submit(new: NewJob) -> Job:
            return (await engine.jobs.submit(ws.id, new, actor="test")).job

        first = await submit(NewJob("noop", {"n": 1}))
        second = await submit(NewJob("noop", {"n": 2}))
        urgent = await submit(NewJob("sleep", {"seconds": 30}, priority=10))

        seen = await _read_queue(node_packages, prefix, str(urgent.id))

        assert seen["bullmq"] == _pinned_bullmq()
        assert seen["paused"] is False
        counts = seen["counts"]
        # Every stitchwork job carries a BullMQ priority, so BullMQ keeps them "prioritized".
        assert (counts["prioritized"], counts["waiting"]) == (3, 0)
        assert (counts["active"], counts["delayed"], counts["failed"]) == (0, 0, 0)
        # BullMQ's own order: the higher stitchwork priority first, then first in, first out.
        assert [j["id"] for j in seen["jobs"]] == [str(urgent.id), str(first.id), str(second.id)]
        assert [j["name"] for j in seen["jobs"]] == ["sleep", "noop", "noop"]
        priorities = {j["id"]: j["priority"] for j in seen["jobs"]}
        assert priorities[str(first.id)] == priorities[str(second.id)] == bull_priority(0)
        assert 1 <= priorities[str(urgent.id)] == bull_priority(10) < bull_priority(0)
        job = seen["job"]
        assert job["id"] == str(urgent.id)
        assert job["name"] == "sleep"
        assert job["data"] == {"job_id": str(urgent.id), "type": "sleep", "attempt": 1}
        assert job["state"] == "prioritized"
        assert job["attemptsMade"] == 0

        # A stitchwork worker's reservation is BullMQ's moveToActive: Node sees it active.
        reserved = await engine.queue.reserve("node-interop", 1, timedelta(seconds=30))
        assert [j.id for j in reserved] == [urgent.id]
        assert (await engine.store.get_job(urgent.id)).status is JobStatus.RUNNING

        seen = await _read_queue(node_packages, prefix, str(urgent.id))

        assert (seen["counts"]["active"], seen["counts"]["prioritized"]) == (1, 2)
        assert seen["job"]["state"] == "active"
        states = {j["id"]: j["state"] for j in seen["jobs"]}
        assert states == {
            str(urgent.id): "active",
            str(first.id): "prioritized",
            str(second.id): "prioritized",
        }

        # Pausing the stitchwork queue pauses the BullMQ queue Node tooling looks at.
        await engine.queue.pause("default")
        seen = await _read_queue(node_packages, prefix, str(first.id))
        assert seen["paused"] is True
        assert seen["job"]["data"] == {"job_id": str(first.id), "type": "noop", "attempt": 1}
    finally:
        await engine.close()
