"""An event's SSE frame and WebSocket message: the documented formats, encoded once per event."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from stitchwork.api import wire
from stitchwork.api.schemas import EventPublic
from stitchwork.domain.events import Event
from tests.sse import parse_frames

JOB = uuid.uuid4()


def _event(event_id: int = 871, seq: int = 3, type_: str = "step.output") -> Event:
    return Event(
        id=event_id,
        job_id=JOB,
        seq=seq,
        type=type_,
        actor="worker",
        payload={"chunk": 'caf\u00e9 "quoted"\nline two\n', "stream": "stdout"},
        created_at=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
        step_id=uuid.uuid4(),
        workspace_id=uuid.uuid4(),
    )


def test_sse_frame_carries_type_the_event_as_data_and_seq_or_id() -> None:
    event = _event()
    public = EventPublic.of(event).model_dump(mode="json")

    (by_seq,) = parse_frames(wire.sse_frame(event, by_seq=True))
    (by_id,) = parse_frames(wire.sse_frame(event, by_seq=False))

    assert (by_seq.event, by_seq.id, by_seq.json()) == ("step.output", "3", public)
    assert (by_id.event, by_id.id, by_id.json()) == ("step.output", "871", public)


@pytest.mark.parametrize(
    ("type_", "name"),
    [("job.completed", "job:status"), ("job.queued", "job:status"), ("step.output", "step:output")],
)
def test_ws_message_is_the_documented_envelope(type_: str, name: str) -> None:
    event = _event(type_=type_)
    room = f"job:{JOB}"

    message = json.loads(wire.ws_message(event, room).text)

    assert message == {
        "event": name,
        "room": room,
        "seq": 3,
        "id": 871,
        "data": EventPublic.of(event).model_dump(mode="json"),
    }


def test_an_event_is_encoded_once_for_all_its_subscribers() -> None:
    event = _event()
    frame = wire.sse_frame(event, by_seq=True)
    message = wire.ws_message(event, "job:x")

    assert wire.sse_frame(event, by_seq=True) is frame
    assert wire.ws_message(event, "job:x") is message
    assert json.loads(wire.ws_message(event, "workspace:y:jobs").text)["room"] == (
        "workspace:y:jobs"
    )


def test_equal_ids_of_different_events_are_not_confused() -> None:
    # Two databases in one process (tests, several engines) both have an event 871.
    first = _event()
    other = replace(first, payload={"chunk": "something else"})

    assert json.loads(wire.ws_message(other, "job:x").text)["data"]["payload"] == {
        "chunk": "something else"
    }
    assert parse_frames(wire.sse_frame(other, by_seq=True))[0].json()["payload"] == {
        "chunk": "something else"
    }
    assert json.loads(wire.ws_message(first, "job:x").text)["data"]["payload"]["stream"] == "stdout"


def test_the_cache_forgets_old_events() -> None:
    events = [_event(event_id=i) for i in range(wire.CACHE_SIZE + 10)]
    for event in events:
        wire.sse_frame(event, by_seq=True)

    assert len(wire._cache) <= wire.CACHE_SIZE
    assert id(events[0]) not in wire._cache  # still alive, so its id cannot have been reused
    assert wire._cache[id(events[-1])].event is events[-1]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_ws_frame_is_a_final_unmasked_text_frame_of_the_message(size: int) -> None:
    message = wire.WsMessage("x" * size)
    frame = message.frame

    assert frame[0] == 0x81  # FIN, no RSV bits (not compressed), text
    assert frame[1] & 0x80 == 0  # a server's frames are not masked
    length, start = frame[1], 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(frame[2:10], "big"), 10
    assert (length, frame[start:]) == (size, b"x" * size)
    assert message.frame is frame
