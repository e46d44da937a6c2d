"""Slack- and Mattermost-compatible chat: slash commands in, incoming webhooks out.

In: ``POST /api/v1/chat/slack`` receives slash-command and outgoing-webhook requests
(form-encoded). A Slack request is verified with its ``X-Slack-Signature`` (v0, HMAC-SHA256
of ``v0:{timestamp}:{body}`` with the signing secret) and ``X-Slack-Request-Timestamp``
(within 5 minutes); a Mattermost request with its ``token``. A request seen before (same
signature, or same Mattermost ``trigger_id``/``post_id``) is refused as a replay.

Out: answers and status are POSTed to the incoming-webhook URL, in order, retried with
backoff when the POST fails. Webhooks can neither return a message id nor edit a message, so
a job's "thread" is its first status message: later messages of the thread repeat its title,
an edit is a new message marked "(update)", and when the webhook answers with JSON holding a
``ts`` (Slack) or ``id`` (Mattermost) the thread's messages are sent as replies to it
(``thread_ts`` / ``root_id``). See docs/chat.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import timedelta
from itertools import count
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httpx
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stitchwork.chat.base import ChatUser, CommandCallback, IncomingMessage, MessageRef
from stitchwork.clock import Clock, SystemClock
from stitchwork.config import Settings
from stitchwork.errors import BackendUnavailable, Forbidden, InvalidRequest, Unauthorized

if TYPE_CHECKING:
    from fastapi import FastAPI

    from stitchwork.runtime.engine import Engine

__all__ = ["MAX_SKEW", "SlackChatProvider", "mount_slack", "slack_signature"]

log = structlog.get_logger(__name__)

MAX_SKEW = timedelta(minutes=5)
PATH = "/chat/slack"
_MAX_TEXT = 3000  # Slack truncates longer webhook texts; keep every message whole


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature of ``body`` sent at ``timestamp``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class ReplayGuard:
    """Remembers the requests of the last ``MAX_SKEW`` (older ones are refused by their
    timestamp anyway), so a captured request cannot be sent again."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._seen: dict[str, float] = {}  # key -> when it was seen (epoch seconds)

    def check(self, key: str) -> None:
        now = self.clock.now().timestamp()
        horizon = now - 2 * MAX_SKEW.total_seconds()
        for old in [k for k, seen in self._seen.items() if seen < horizon]:
            del self._seen[old]
        if key in self._seen:
            raise Forbidden(
                "this request was already received; a repeated request is refused as a replay",
                reason="replay",
            )
        self._seen[key] = now


class SlackChatProvider:
    """The Slack/Mattermost ``ChatProvider``: see the module docstring."""

    name = "slack"
    direct = True  # a slash command's text is the command itself

    def __init__(
        self,
        *,
        webhook_url: str,
        signing_secret: str = "",
        mattermost_token: str = "",
        clock: Clock | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 10.0,
    ) -> None:
        if not (signing_secret or mattermost_token):
            raise ValueError("give a Slack signing secret or a Mattermost token")
        self.webhook_url = webhook_url
        self.signing_secret = signing_secret
        self.mattermost_token = mattermost_token
        self.clock = clock or SystemClock()
        self.replays = ReplayGuard(self.clock)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._callbacks: list[CommandCallback] = []
        self._client: httpx.AsyncClient | None = None
        self._send_lock = asyncio.Lock()  # webhook messages arrive in the order they were sent
        self._pending: set[asyncio.Task[None]] = set()
        self._threads: dict[str, tuple[str, str, str | None]] = {}  # id -> channel, title, root
        self._channel_names: dict[str, str] = {}
        self._ids = count(1)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock | None = None) -> SlackChatProvider:
        return cls(
            webhook_url=settings.slack_webhook_url,
            signing_secret=settings.slack_signing_secret,
            mattermost_token=settings.mattermost_token,
            clock=clock,
        )

    # -- the port -----------------------------------------------------------------------------

    def on_command(self, callback: CommandCallback) -> None:
        self._callbacks.append(callback)

    async def connect(self) -> None:
        self._http()

    async def disconnect(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def is_connected(self) -> bool:
        return self._client is not None

    async def send_message(self, channel_id: str, text: str) -> MessageRef:
        payload = {"text": text, **self._channel(channel_id)}
        answer = await self._post(payload)
        return MessageRef(channel_id, answer or self._new_id())

    async def create_thread(self, channel_id: str, title: str, text: str) -> MessageRef:
        root = await self._post({"text": f"{title}\n{text}", **self._channel(channel_id)})
        thread_id = f"thread-{next(self._ids)}"
        self._threads[thread_id] = (channel_id, title, root)
        return MessageRef(channel_id, root or self._new_id(), thread_id=thread_id)

    async def send_thread_message(self, thread_id: str, text: str) -> MessageRef:
        channel_id, payload = self._in_thread(thread_id, text)
        answer = await self._post(payload)
        return MessageRef(channel_id, answer or self._new_id(), thread_id=thread_id)

    async def edit_message(self, ref: MessageRef, text: str) -> None:
        # A webhook cannot edit what it posted: the new text is posted as an update.
        if ref.thread_id is not None and ref.thread_id in self._threads:
            _, payload = self._in_thread(ref.thread_id, f"(update) {text}")
        else:
            payload = {"text": f"(update) {text}", **self._channel(ref.channel_id)}
        await self._post(payload)

    # -- incoming requests --------------------------------------------------------------------

    def verify(self, headers: dict[str, str], body: bytes) -> IncomingMessage:
        """Check a request's signature or token and replay status; returns its message.

        Raises:
            Unauthorized: a missing or wrong signature or token, or a stale timestamp.
            Forbidden: the request was received before (a replay).
            InvalidRequest: the body is not a form with a user, a channel and text.
        """
        try:
            form = {
                k: v[0] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()
            }
        except UnicodeDecodeError:
            raise InvalidRequest("the body is not UTF-8 form data", field="body") from None
        if self.signing_secret and "x-slack-signature" in headers:
            self._verify_slack(headers, body)
            platform = "slack"
        elif self.mattermost_token and "token" in form:
            self._verify_mattermost(form)
            platform = "mattermost"
        else:
            expected = " or ".join(
                what
                for what, configured in (
                    ("an X-Slack-Signature header", self.signing_secret),
                    ("a Mattermost token", self.mattermost_token),
                )
                if configured
            )
            raise Unauthorized(f"the request is not signed: it needs {expected}")
        missing = [name for name in ("user_id", "channel_id") if not form.get(name)]
        if missing:
            raise InvalidRequest(f"the form lacks {', '.join(missing)}", field=missing[0])
        text = form.get("text", "").strip()
        trigger = form.get("trigger_word", "")
        if trigger and text.lower().startswith(trigger.lower()):
            text = text[len(trigger) :].lstrip(" :,")  # outgoing webhooks repeat the trigger
        if form.get("channel_name"):
            self._channel_names[form["channel_id"]] = form["channel_name"]
        user = ChatUser(platform, form["user_id"], form.get("user_name") or form["user_id"])
        return IncomingMessage(user, form["channel_id"], text)

    def dispatch(self, message: IncomingMessage) -> None:
        """Hand ``message`` to the callbacks without making the platform wait (Slack wants an
        answer within 3 s; the bridge's answer follows through the webhook)."""
        task = asyncio.create_task(self._deliver(message), name="slack-command")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, message: IncomingMessage) -> None:
        for callback in self._callbacks:
            try:
                await callback(message)
            except Exception:
                log.exception("slack_command_failed", user=message.user.user_id)

    def _verify_slack(self, headers: dict[str, str], body: bytes) -> None:
        timestamp = headers.get("x-slack-request-timestamp", "")
        signature = headers.get("x-slack-signature", "")
        if not timestamp.isdigit():
            raise Unauthorized("X-Slack-Request-Timestamp is missing or not a number")
        self._check_age(int(timestamp))
        expected = slack_signature(self.signing_secret, timestamp, body)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Unauthorized("the X-Slack-Signature does not match the signing secret")
        self.replays.check(f"slack:{signature}")

    def _verify_mattermost(self, form: dict[str, str]) -> None:
        if not hmac.compare_digest(form["token"].encode(), self.mattermost_token.encode()):
            raise Unauthorized("the Mattermost token does not match")
        if form.get("timestamp", "").isdigit():  # outgoing webhooks: milliseconds
            self._check_age(int(form["timestamp"]) // 1000)
        once = form.get("trigger_id") or form.get("post_id")
        if not once:
            raise Unauthorized("a Mattermost request carries a trigger_id or a post_id")
        self.replays.check(f"mattermost:{once}")

    def _check_age(self, epoch_s: int) -> None:
        skew = abs(self.clock.now().timestamp() - epoch_s)
        if skew > MAX_SKEW.total_seconds():
            raise Unauthorized(
                f"the request's timestamp is {int(skew)} s away from now (at most "
                f"{int(MAX_SKEW.total_seconds())} s): refused as a possible replay"
            )

    # -- outgoing webhooks --------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    def _channel(self, channel_id: str) -> dict[str, str]:
        name = self._channel_names.get(channel_id)
        return {"channel": name} if name else {}

    def _in_thread(self, thread_id: str, text: str) -> tuple[str, dict[str, Any]]:
        known = self._threads.get(thread_id)
        if known is None:
            raise InvalidRequest(f"no thread {thread_id!r} was started here", field="thread_id")
        channel_id, title, root = known
        if root is None:
            return channel_id, {"text": f"[{title}] {text}", **self._channel(channel_id)}
        return channel_id, {
            "text": text,
            "thread_ts": root,
            "root_id": root,
            **self._channel(channel_id),
        }

    async def _post(self, payload: dict[str, Any]) -> str | None:
        """POST to the webhook, retrying with backoff; the posted message's id when the
        webhook says it (``ts`` or ``id`` in a JSON answer)."""
        if not self.webhook_url:
            raise BackendUnavailable("no incoming-webhook URL: set STITCHWORK_SLACK_WEBHOOK_URL")
        text = str(payload["text"])
        payload["text"] = text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."
        async with self._send_lock:
            delay = self.backoff_s
            for attempt in range(1, self.attempts + 1):
                wait: float | None = delay
                try:
                    response = await self._http().post(self.webhook_url, json=payload)
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_success:
                        return _posted_id(response)
                    problem = f"HTTP {response.status_code}"
                    if response.status_code == 429:
                        wait = _retry_after(response) or delay
                    elif response.status_code < 500:
                        wait = None  # the webhook refused the message: sending it again won't help
                log.warning("chat_webhook_failed", attempt=attempt, problem=problem)
                if wait is None or attempt == self.attempts:
                    raise BackendUnavailable(f"the chat webhook refused a message ({problem})")
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _new_id(self) -> str:
        return f"webhook-{next(self._ids)}"


def _posted_id(response: httpx.Response) -> str | None:
    if "json" not in response.headers.get("content-type", ""):
        return None  # Slack and Mattermost webhooks answer "ok"
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("ts") or data.get("id")
    return str(found) if found else None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers.get("retry-after", "")), 60.0)
    except ValueError:
        return None


def slack_router(provider: SlackChatProvider) -> APIRouter:
    """``POST /chat/slack``: the slash-command and outgoing-webhook endpoint."""
    router = APIRouter(tags=["chat"])

    @router.post(PATH, summary="Slack or Mattermost slash command / outgoing webhook")
    async def command(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        message = provider.verify(headers, body)
        provider.dispatch(message)
        return JSONResponse({"response_type": "ephemeral", "text": f"Got it: {message.text}"})

    return router


def mount_slack(app: FastAPI, engine: Engine, prefix: str) -> None:
    """Add the endpoint under ``prefix`` and keep its ``ChatSession`` in ``app.state.chat``;
    whoever serves the app runs ``app.state.chat.run()`` for the herald's status updates."""
    from stitchwork.chat.session import ChatSession

    provider = SlackChatProvider.from_settings(engine.settings, clock=engine.clock)
    app.state.chat = ChatSession(engine, provider)
    app.include_router(slack_router(provider), prefix=prefix)
