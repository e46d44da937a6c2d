"""The wire forms of an event: its SSE frame and its WebSocket message, each encoded once.

Every stream of a job receives the same ``Event`` objects from the bus, so an event is encoded
once for all its subscribers instead of once per subscriber: the encodings are remembered by
the event's identity (not its id: two databases in one process both have an event 1) for the
last ``CACHE_SIZE`` events. Backfilled events are fresh objects and are encoded per stream.
"""

from __future__ import annotations

import json

from fastapi.sse import format_sse_event

from stitchwork.api.schemas import EventPublic
from stitchwork.domain.events import Event, EventType

CACHE_SIZE = 4096

# A job's status changes share one message name; everything else is its type as noun:verb.
STATUS_EVENTS = frozenset(
    {
        EventType.JOB_QUEUED,
        EventType.JOB_STARTED,
        EventType.JOB_COMPLETED,
        EventType.JOB_FAILED,
        EventType.JOB_CANCELLED,
        EventType.JOB_RETRIED,
        EventType.JOB_REQUEUED,
    }
)


def message_name(event_type: str) -> str:
    return "job:status" if event_type in STATUS_EVENTS else event_type.replace(".", ":")


class WsMessage:
    """A WebSocket text message, and its frame as a server sends it (final, unmasked,
    uncompressed), made once however many connections it goes to."""

    __slots__ = ("_frame", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            payload = self.text.encode()
            n = len(payload)
            if n < 126:
                head = bytes((0x81, n))
            elif n < 65536:
                head = bytes((0x81, 126)) + n.to_bytes(2, "big")
            else:
                head = bytes((0x81, 127)) + n.to_bytes(8, "big")
            self._frame = head + payload
        return self._frame


class _Encoded:
    """One event's encodings, made when first asked for."""

    __slots__ = ("by_id", "by_seq", "data", "event", "ws")

    def __init__(self, event: Event) -> None:
        self.event = event  # held, so that id(event) is not reused while cached
        self.data = EventPublic.of(event).model_dump_json()
        self.by_seq: bytes | None = None
        self.by_id: bytes | None = None
        self.ws: dict[str, WsMessage] = {}


_cache: dict[int, _Encoded] = {}


def _encoded(event: Event) -> _Encoded:
    entry = _cache.get(id(event))
    if entry is None or entry.event is not event:
        entry = _cache[id(event)] = _Encoded(event)
        if len(_cache) > CACHE_SIZE:  # oldest first: events are streamed soon after publish
            del _cache[next(iter(_cache))]
    return entry


def sse_frame(event: Event, *, by_seq: bool) -> bytes:
    """``event:`` / ``data:`` / ``id:``; the id is the job's seq on a job stream
    (``by_seq``) and the global event id on the workspace stream."""
    entry = _encoded(event)
    frame = entry.by_seq if by_seq else entry.by_id
    if frame is None:
        frame = format_sse_event(
            event=event.type, data_str=entry.data, id=str(event.seq if by_seq else event.id)
        )
        if by_seq:
            entry.by_seq = frame
        else:
            entry.by_id = frame
    return frame


def ws_message(event: Event, room: str) -> WsMessage:
    """``{"event": "job:status", "room": ..., "seq": ..., "id": ..., "data": {<event>}}``."""
    entry = _encoded(event)
    message = entry.ws.get(room)
    if message is None:
        # The cached JSON of the event goes in as it is, instead of a parse and a re-dump.
        head = json.dumps({"event": message_name(event.type), "room": room})
        text = f'{head[:-1]}, "seq": {event.seq}, "id": {event.id}, "data": {entry.data}}}'
        message = entry.ws[room] = WsMessage(text)
    return message


# The streams of a job woken in one flush round receive the same events: their joined bytes
# are made once per round. Keyed by the events' identities (a type filter can make two lists
# with the same ends differ in between); each entry holds its events, so no id is reused.
_JOINED_SIZE = 64
_joined: dict[tuple[object, ...], tuple[list[Event], bytes, int]] = {}


def _joined_entry(
    key: tuple[object, ...], events: list[Event], parts: list[bytes]
) -> tuple[bytes, int]:
    joined = b"".join(parts)
    longest = max(map(len, parts), default=0)
    _joined[key] = (events, joined, longest)
    if len(_joined) > _JOINED_SIZE:
        del _joined[next(iter(_joined))]
    return joined, longest


def sse_chunk(events: list[Event], *, by_seq: bool) -> bytes:
    """The SSE frames of ``events``, one after the other."""
    key = (by_seq, *map(id, events))
    entry = _joined.get(key)
    if entry is not None:
        return entry[1]
    return _joined_entry(key, events, [sse_frame(e, by_seq=by_seq) for e in events])[0]


def ws_frames(events: list[Event], room: str) -> tuple[bytes, int]:
    """The WebSocket frames of ``events`` for ``room``, one after the other, and the length of
    the longest (a long message may have to be compressed instead)."""
    key = (room, *map(id, events))
    entry = _joined.get(key)
    if entry is not None:
        return entry[1], entry[2]
    return _joined_entry(key, events, [ws_message(e, room).frame for e in events])
