"""Following an SSE stream from the CLI, reconnecting with Last-Event-ID when it drops."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from stitchwork.cli.client import Api
from stitchwork.cli.output import fail

RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0)
READ_TIMEOUT_S = 60.0  # well above the server's ping interval


@dataclass(frozen=True)
class StreamEvent:
    id: str
    type: str
    data: dict[str, Any]


def follow(
    api: Api,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    last_id: str = "",
    on_reconnect: Callable[[str], None] | None = None,
) -> Iterator[StreamEvent]:
    """Yield a stream's events until ``stream.complete``; on a dropped connection, reconnect
    with the last id seen so nothing is missed or repeated. Errors (401, 404) end the command."""
    attempt = 0
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(
                api.http,
                "GET",
                path,
                params=params,
                headers=headers,
                timeout=httpx.Timeout(10.0, read=READ_TIMEOUT_S),
            ) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    api.raise_for_problem(source.response)
                attempt = 0
                for sse in source.iter_sse():
                    if sse.event == "stream.complete":
                        yield StreamEvent(last_id, sse.event, json.loads(sse.data))
                        return
                    if not sse.data:
                        continue
                    last_id = sse.id or last_id
                    yield StreamEvent(last_id, sse.event, json.loads(sse.data))
        except (httpx.TransportError, SSEError) as exc:
            delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
            attempt += 1
            if attempt > 20:
                fail(f"lost the event stream from {api.creds.api_url} and could not reconnect")
            if on_reconnect is not None:
                on_reconnect(f"connection lost ({type(exc).__name__}); reconnecting in {delay:g}s")
            time.sleep(delay)
