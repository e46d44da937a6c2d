"""Helpers for streaming tests: a strict server-sent-events frame parser, readers for real
HTTP responses, and a free TCP port.

The parser follows the SSE wire format exactly: ``field: value`` lines (one optional space after
the colon is dropped), ``:`` comments, a frame ending at a blank line, ``\\n``, ``\\r\\n`` or
``\\r`` line ends. It is strict where the spec is lenient, so a malformed frame fails a test
instead of being skipped: an unknown field, a line without a colon and a non-numeric ``retry``
raise ``SseFormatError``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

FIELDS = frozenset({"id", "event", "data", "retry"})
LINE_END = re.compile(rb"\r\n|\r|\n")


class SseFormatError(ValueError):
    """The bytes are not a well-formed event stream."""


@dataclass
class Frame:
    """One frame (everything up to a blank line). ``data`` joins its ``data:`` lines with
    ``\\n``; ``None`` means the field was absent. ``received_at`` is ``time.monotonic()``
    when the frame's last line arrived."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    received_at: float = 0.0

    @property
    def is_comment(self) -> bool:
        return bool(self.comments) and self.fields_set == 0

    @property
    def fields_set(self) -> int:
        return sum(v is not None for v in (self.id, self.event, self.data, self.retry))

    def json(self) -> Any:
        if self.data is None:
            raise SseFormatError(f"frame has no data: {self!r}")
        return json.loads(self.data)


class SseParser:
    """Incremental: ``feed(bytes)`` returns the frames completed by those bytes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._frame = Frame()
        self._has_lines = False
        self._data: list[str] = []
        self._after_cr = False  # the last line ended with a \r that may be half of a \r\n

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        frames: list[Frame] = []
        while self._buffer:
            if self._after_cr:
                self._after_cr = False
                if self._buffer.startswith(b"\n"):
                    self._buffer = self._buffer[1:]
                    continue
            end = LINE_END.search(self._buffer)
            if end is None:
                break
            line = self._buffer[: end.start()]
            self._after_cr = end.group() == b"\r"
            self._buffer = self._buffer[end.end() :]
            frame = self._line(line.decode("utf-8"))
            if frame is not None:
                frames.append(frame)
        return frames

    def _line(self, line: str) -> Frame | None:
        if line == "":
            if not self._has_lines:
                return None  # blank lines between frames
            frame = self._frame
            frame.data = "\n".join(self._data) if self._data else None
            frame.received_at = time.monotonic()
            self._frame, self._data, self._has_lines = Frame(), [], False
            return frame
        self._has_lines = True
        if line.startswith(":"):
            self._frame.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if not colon:
            raise SseFormatError(f"line without a colon: {line!r}")
        value = value.removeprefix(" ")
        if name not in FIELDS:
            raise SseFormatError(f"unknown field {name!r} in line {line!r}")
        if name == "data":
            self._data.append(value)
        elif name == "retry":
            if not (value.isascii() and value.isdigit()):
                raise SseFormatError(f"retry must be digits: {line!r}")
            self._frame.retry = int(value)
        elif name == "id":
            self._frame.id = value
        else:
            self._frame.event = value
        return None

    @property
    def leftover(self) -> bytes:
        """Bytes of an unfinished line (should be empty when a stream ends cleanly)."""
        return self._buffer

    @property
    def unfinished(self) -> bool:
        """A line or a frame is still waiting for the rest of it."""
        return bool(self._buffer) or self._has_lines


def parse_frames(raw: bytes) -> list[Frame]:
    """Every complete frame in ``raw``; fails if a frame is left unfinished."""
    parser = SseParser()
    frames = parser.feed(raw)
    if parser.unfinished:
        raise SseFormatError(f"unfinished frame at the end: {parser.leftover!r}")
    return frames


async def frames_of(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of a streaming httpx response as they arrive."""
    parser = SseParser()
    async for chunk in response.aiter_raw():
        for frame in parser.feed(chunk):
            yield frame


def free_port() -> int:
    """A TCP port nothing listens on right now (for processes that need a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
