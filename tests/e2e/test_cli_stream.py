"""The CLI's live views against real processes: they resume across an API restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import httpx
import pytest

pytestmark = pytest.mark.slow

Spawn = Callable[..., Popen[bytes]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: Popen[bytes], credentials: Path, timeout_s: float = 30) -> str:
    """Wait until serve answers and has written the CLI's credentials; returns the key."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited early"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200 and credentials.exists():
                return str(json.loads(credentials.read_text())["api_key"])
        except (httpx.TransportError, ValueError):
            pass  # not listening yet, or the file is being replaced
        time.sleep(0.1)
    raise AssertionError(f"{url} not healthy in {timeout_s}s")


def _cli(data_dir: Path, database_url: str, *args: str) -> Popen[str]:
    env = {
        **os.environ,
        "STITCHWORK_DATA_DIR": str(data_dir),
        "STITCHWORK_DATABASE_URL": database_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "stitchwork.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_watch_resumes_after_the_api_restarts_and_ends_with_the_job(
    spawn: Spawn, tmp_path: Path, database_url: str
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    credentials = tmp_path / "data" / "credentials.json"
    api = spawn("serve", "--no-worker", "--port", str(port))
    key = _wait_healthy(url, api, credentials)
    spawn("worker")
    job = httpx.post(
        f"{url}/api/v1/jobs",
        json={"type": "emit", "payload": {"count": 150, "rate_per_s": 20}},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    watch = _cli(tmp_path / "data", database_url, "jobs", "watch", job["id"])
    try:
        time.sleep(3.0)  # the watcher has started and is following the stream
        assert watch.poll() is None
        api.send_signal(signal.SIGTERM)
        assert api.wait(15) == 0
        time.sleep(0.5)  # the watcher sees the connection drop
        restarted = spawn("serve", "--no-worker", "--port", str(port))
        _wait_healthy(url, restarted, credentials)
        output, _ = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, output
    assert f"job {job['id']} completed" in output
    assert "event 150" in output  # the last output lines of the step are on screen


def test_events_tail_json_prints_a_jobs_events_in_order_as_they_happen(
    spawn: Spawn, tmp_path: Path, database_url: str
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    api = spawn("serve", "--port", str(port))
    key = _wait_healthy(url, api, tmp_path / "data" / "credentials.json")
    tail = _cli(tmp_path / "data", database_url, "events", "tail", "--json", "--since", "0")
    try:
        job = httpx.post(
            f"{url}/api/v1/jobs",
            json={"type": "shell", "payload": {"command": "echo one; echo two"}},
            headers={"Authorization": f"Bearer {key}"},
        ).json()
        assert tail.stdout is not None
        events = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = tail.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["job_id"] == job["id"]:
                events.append(event)
                if event["type"] == "job.completed":
                    break
    finally:
        tail.kill()
        tail.wait(5)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "job.completed"
    output = "".join(e["payload"]["chunk"] for e in events if e["type"] == "step.output")
    assert output == "one\ntwo\n"
