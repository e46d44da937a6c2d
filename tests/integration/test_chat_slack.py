"""The Slack/Mattermost-compatible provider over real HTTP: the stitchwork API under uvicorn
receives slash commands, and a second real server stands in for the incoming webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stitchwork.api.app import create_app
from stitchwork.chat.session import ChatSession
from stitchwork.chat.slack import SlackChatProvider
from stitchwork.domain.jobs import TERMINAL_JOB_STATUSES, JobStatus
from stitchwork.errors import BackendUnavailable
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.agent_repos import make_repo
from tests.contract.helpers import running_worker, wait_for_status, wait_until

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
MM_TOKEN = "xr3j5x3p4pfk7kcm4ziqbkmyhe"
ENDPOINT = "/api/v1/chat/slack"
RATE_MESSAGES, RATE_WINDOW_S = 3, 2.0
INDICATORS = ("🟢", "🔵", "✅", "⚠️", "⏸️", "⏭️")
# Five gates that pass at once: a burst of about twenty thread updates in well under a second.
CONFIG = """
default_profile = "fixer"

[profiles.fixer]
adapter = "command"
command = "sh -c 'echo fixed > fixed.txt'"
capabilities = ["repo:read", "repo:write", "git:commit", "git:merge", "shell:exec"]

[gates.a]
command = "true"
[gates.b]
command = "true"
[gates.c]
command = "true"
[gates.d]
command = "true"
[gates.e]
command = "true"

[quality_rails]
agent-task = ["a", "b", "c", "d", "e"]
"""


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(
            lambda: asyncio.sleep(0, server.started), what="uvicorn to listen", timeout=10
        )
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@dataclass
class Receiver:
    """The incoming-webhook stand-in: records every POST; fails the first ``fail`` of them
    with ``fail_status``; answers like Slack's Web API (JSON with a ``ts``) when asked."""

    fail: int = 0
    fail_status: int = 503
    with_ts: bool = False
    posts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return Response("try later", status_code=self.fail_status)
        self.posts.append((time.monotonic(), json.loads(await request.body())))
        if self.with_ts:
            return JSONResponse({"ok": True, "ts": f"1700000000.{len(self.posts):06d}"})
        return Response("ok", media_type="text/plain")

    def texts(self) -> list[str]:
        return [str(body["text"]) for _, body in self.posts]


@asynccontextmanager
async def receiver(**kwargs: Any) -> AsyncIterator[Receiver]:
    recv = Receiver(**kwargs)
    app = Starlette(routes=[Route("/hook", recv.endpoint, methods=["POST"])])
    async with serve(app) as url:
        recv.url = f"{url}/hook"
        yield recv


def signed(form: dict[str, str], *, at: int | None = None, secret: str = SECRET) -> dict[str, Any]:
    """A slash-command request as Slack sends it: form body, timestamp and v0 signature."""
    body = urlencode(form).encode()
    timestamp = str(at if at is not None else int(time.time()))
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256)
    return {
        "content": body,
        "headers": {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": f"v0={mac.hexdigest()}",
        },
    }


def command(text: str, **extra: str) -> dict[str, str]:
    return {
        "command": "/stitch",
        "text": text,
        "user_id": "U1",
        "user_name": "alice",
        "channel_id": "C1",
        "channel_name": "dev",
        "team_id": "T1",
        "response_url": "https://hooks.slack.invalid/commands/1",
        **extra,
    }


@dataclass
class Stack:
    engine: Engine
    ws: uuid.UUID
    url: str
    hook: Receiver
    session: ChatSession


@asynccontextmanager
async def stack(backend: Backend, tmp_path: Path, **hook: Any) -> AsyncIterator[Stack]:
    """The API (with the Slack endpoint), a worker and the chat session's herald, posting to
    a receiver."""
    repo = make_repo(tmp_path / "app", {"README.md": "app\n"}, config=CONFIG)
    async with receiver(**hook) as recv:
        engine = await backend.open_engine(
            slack_signing_secret=SECRET,
            mattermost_token=MM_TOKEN,
            slack_webhook_url=recv.url,
            chat_users={
                "slack:U1": {"workspace": "default", "actions": "*"},
                "mattermost:*": {"workspace": "default", "actions": ["status", "jobs"]},
            },
            chat_repos={"acme/app": str(repo)},
            chat_channel_repos={"C1": "acme/app"},
            chat_rate_messages=RATE_MESSAGES,
            chat_rate_window_s=RATE_WINDOW_S,
        )
        try:
            ws, _ = await engine.auth.ensure_workspace("default")
            app = create_app(engine)
            session = app.state.chat
            assert isinstance(session, ChatSession)
            chat = asyncio.create_task(session.run())
            try:
                await asyncio.wait_for(session.herald.ready.wait(), 10)
                async with serve(app) as url, running_worker(engine):
                    yield Stack(engine, ws.id, url, recv, session)
            finally:
                chat.cancel()
                await asyncio.gather(chat, return_exceptions=True)
        finally:
            await engine.close()


def _text(body: dict[str, Any]) -> str:
    """A posted text without the "(update) " mark of an edit."""
    return str(body["text"]).removeprefix("(update) ")


def max_in_window(times: list[float], window_s: float) -> int:
    """The most items of ``times`` (sorted) that fit in any window of ``window_s``."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_a_signed_slash_command_starts_a_job_whose_status_arrives_within_the_rate_limit(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    async with (
        stack(sqlite_backend, tmp_path, with_ts=True) as s,
        httpx.AsyncClient(base_url=s.url) as http,
    ):
        response = await http.post(ENDPOINT, **signed(command("fix #42")))
        assert response.status_code == 200, response.text
        assert response.json() == {"response_type": "ephemeral", "text": "Got it: fix #42"}

        jobs = await wait_until(
            lambda: s.engine.jobs.list_jobs(s.ws), what="the job to be submitted", timeout=10
        )
        [job] = jobs
        assert (job.type, job.issue_ref) == ("agent-task", "acme/app#42")
        done = await wait_for_status(s.engine, job.id, *TERMINAL_JOB_STATUSES, timeout=60)
        assert done.status is JobStatus.COMPLETED, done.error

        # The herald names the job by its id (or the start of it) and its issue.
        label = re.compile(rf"✅ Job {str(job.id)[:8]}[0-9a-f-]* for acme/app#42 completed")
        await wait_until(
            lambda: asyncio.sleep(0, sum(bool(label.search(t)) for t in s.hook.texts()) >= 2),
            what="the completion in the channel and in the thread",
            timeout=30,
        )
        await asyncio.sleep(RATE_WINDOW_S)  # nothing more is on its way (everything is final)

    posts = s.hook.posts
    root_ts = "1700000000.000001"
    assert posts[0][1]["text"].startswith("acme/app#42: fix\nalice asked me to fix acme/app#42.")
    assert all(body["channel"] == "dev" for _, body in posts)  # the channel's name, as told
    thread = [(at, body) for at, body in posts if body.get("thread_ts") == root_ts]
    channel = [(at, body) for at, body in posts[1:] if "thread_ts" not in body]
    assert thread[0][1]["text"].startswith(f"Started job {job.id} for acme/app#42")
    for where in (thread, channel):
        herald = [at for at, body in where if _text(body).startswith(INDICATORS)]
        assert herald, where
        assert max_in_window(herald, RATE_WINDOW_S - 0.25) <= RATE_MESSAGES, where
        last = str(where[-1][1]["text"])
        assert label.search(last), last
    # The thread got a burst (five gates and their steps) and still only what the rate allows:
    # coalesced, the latest state always shown.
    assert s.session.herald.dropped > 0
    assert not any("FAILED" in t or "ERROR" in t for t in s.hook.texts())


async def test_a_forged_signature_and_a_replayed_request_are_refused(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    async with stack(sqlite_backend, tmp_path) as s, httpx.AsyncClient(base_url=s.url) as http:
        forged = signed(command("fix #42"), secret="not-the-secret")
        response = await http.post(ENDPOINT, **forged)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"] == (
            "the X-Slack-Signature does not match the signing secret"
        )

        unsigned = await http.post(ENDPOINT, content=urlencode(command("jobs")).encode())
        assert unsigned.status_code == 401
        assert "not signed" in unsigned.json()["detail"]

        stale = signed(command("jobs"), at=int(time.time()) - 600)
        response = await http.post(ENDPOINT, **stale)
        assert response.status_code == 401
        assert "refused as a possible replay" in response.json()["detail"]

        request = signed(command("jobs"))
        assert (await http.post(ENDPOINT, **request)).status_code == 200
        replayed = await http.post(ENDPOINT, **request)
        assert replayed.status_code == 403
        assert "refused as a replay" in replayed.json()["detail"]

        await wait_until(
            lambda: asyncio.sleep(0, s.hook.posts), what="the answer to jobs", timeout=10
        )
        await asyncio.sleep(0.3)  # a second answer would be here by now
        assert s.hook.texts() == ["There are no jobs yet. Say @stitch fix #42 to start one."]
        assert await s.engine.jobs.list_jobs(s.ws) == []


async def test_mattermost_requests_are_checked_by_token_and_trigger_id(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    async with stack(sqlite_backend, tmp_path) as s, httpx.AsyncClient(base_url=s.url) as http:
        form = {**command("fix #42"), "token": MM_TOKEN, "trigger_id": "tr-1"}
        form.update(user_id="mm-user", user_name="bob", channel_name="town-square")
        body = {
            "content": urlencode(form).encode(),
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        }
        assert (await http.post(ENDPOINT, **body)).status_code == 200
        assert (await http.post(ENDPOINT, **body)).status_code == 403  # same trigger_id

        wrong = {**form, "token": "guess", "trigger_id": "tr-2"}
        response = await http.post(ENDPOINT, content=urlencode(wrong).encode())
        assert response.status_code == 401
        assert response.json()["detail"] == "the Mattermost token does not match"

        await wait_until(lambda: asyncio.sleep(0, s.hook.posts), what="the answer", timeout=10)
        [(_, answer)] = s.hook.posts
        assert answer["channel"] == "town-square"
        assert answer["text"].startswith("Sorry bob, you may not fix here")


async def test_webhook_posts_are_retried_with_backoff_and_refusals_are_not() -> None:
    async with receiver(fail=2) as hook:
        provider = SlackChatProvider(webhook_url=hook.url, signing_secret=SECRET, backoff_s=0.05)
        await provider.connect()
        try:
            ref = await provider.create_thread("C1", "acme/app#1: fix", "starting")
            await provider.send_thread_message(ref.thread_id or "", "step one")
            await provider.edit_message(ref, "done")
            assert hook.attempts == 5
            assert hook.texts() == [
                "acme/app#1: fix\nstarting",
                "[acme/app#1: fix] step one",  # plain webhooks: the thread is its title
                "[acme/app#1: fix] (update) done",
            ]
            hook.fail, hook.fail_status, hook.attempts = 10, 404, 0
            with pytest.raises(BackendUnavailable, match="HTTP 404"):
                await provider.send_message("C1", "lost")
            assert hook.attempts == 1
        finally:
            await provider.disconnect()
