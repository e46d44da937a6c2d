"""The body size limit counts request bodies and stays out of the way of requests without one
(event streams are long GETs: a wrapper around ``send`` would cost every chunk)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from stitchwork.api.limits import BodySizeLimit

LIMIT = 1024


class _App:
    """Records the ``send`` it was given and what it read."""

    def __init__(self) -> None:
        self.send: Send | None = None
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.send = send
        if scope["type"] == "http" and scope["method"] != "GET":
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(method: str, headers: list[tuple[bytes, bytes]], **extra: Any) -> Scope:
    return {"type": "http", "method": method, "headers": headers, "http_version": "1.1", **extra}


def _receiver(*chunks: bytes) -> Receive:
    pending = list(chunks)

    async def receive() -> Message:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return receive


async def _sent(app: Any, scope: Scope, receive: Receive) -> tuple[list[Message], Send]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, send


@pytest.mark.parametrize(
    "headers",
    [[], [(b"content-length", b"0")], [(b"accept", b"text/event-stream")]],
)
async def test_a_request_without_a_body_gets_the_servers_send_itself(
    headers: list[tuple[bytes, bytes]],
) -> None:
    app = _App()
    sent, send = await _sent(BodySizeLimit(app, LIMIT), _scope("GET", headers), _receiver())
    assert app.send is send
    assert sent[0]["status"] == 200


async def test_websocket_scopes_pass_through() -> None:
    app = _App()
    scope = {"type": "websocket", "headers": [], "path": "/api/v1/ws"}
    _, send = await _sent(BodySizeLimit(app, LIMIT), scope, _receiver())
    assert app.send is send


@pytest.mark.parametrize(
    ("headers", "http_version"),
    [
        ([(b"transfer-encoding", b"chunked")], "1.1"),
        ([(b"content-length", b"2000")], "1.1"),  # lies: claims more than it sends
        ([], "2"),  # HTTP/2 frames a body without either header
    ],
)
async def test_bodies_over_the_limit_are_413_however_they_are_framed(
    headers: list[tuple[bytes, bytes]], http_version: str
) -> None:
    app = _App()
    limit = BodySizeLimit(app, 4096)
    scope = _scope("POST", headers, http_version=http_version)
    sent, _ = await _sent(limit, scope, _receiver(b"x" * 3000, b"x" * 3000))
    assert sent[0]["status"] == 413
    assert b"exceeds the limit of 4096 bytes" in sent[1]["body"]


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    app = _App()
    scope = _scope("POST", [(b"content-length", b"999999")])
    sent, _ = await _sent(BodySizeLimit(app, LIMIT), scope, _receiver(b"x"))
    assert sent[0]["status"] == 413
    assert app.send is None  # the app never ran


async def test_a_body_within_the_limit_reaches_the_app() -> None:
    app = _App()
    scope = _scope("POST", [(b"content-length", b"5")])
    sent, _ = await _sent(BodySizeLimit(app, LIMIT), scope, _receiver(b"hello"))
    assert app.body == b"hello"
    assert sent[0]["status"] == 200
