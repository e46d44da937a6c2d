"""The fan-out benchmark's lean client reads the wire exactly: chunked bodies and WebSocket
frames however the bytes are split, deflated messages, pings, and the fields it checks."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import zlib
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "_fanout_client.py"
    spec = importlib.util.spec_from_file_location("_fanout_client", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


client = _load()

EVENT = {
    "id": 871,
    "job_id": "0b7a7c1e-8d2f-4a39-9d3b-8f7d9a1c2e3f",
    "seq": 3,
    "type": "step.output",
    "step_id": None,
    "actor": "worker",
    "payload": {"chunk": 'a "seq": 99, "created_at": "x"', "created_at": "not this one"},
    "created_at": "2026-01-01T12:00:00.123456Z",
}


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _server_frame(
    payload: bytes, opcode: int = 0x1, *, fin: bool = True, rsv1: bool = False
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + n.to_bytes(2, "big") + payload
    return bytes([first, 127]) + n.to_bytes(8, "big") + payload


def test_event_fields_of_an_sse_frame_and_a_ws_message() -> None:
    data = json.dumps(EVENT, separators=(",", ":")).encode()
    frame = b"event: step.output\ndata: " + data + b"\nid: 3"
    message = json.dumps(
        {"event": "step:output", "room": "job:x", "seq": 4, "id": 871, "data": EVENT}
    ).encode()

    assert client.event_fields(frame) == (3, 3, b"2026-01-01T12:00:00.123456Z")
    assert client.event_fields(message, envelope=True) == (4, 3, b"2026-01-01T12:00:00.123456Z")


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_chunked_bodies_decode_however_the_bytes_arrive(cuts: list[int]) -> None:
    body = [b"retry: 3000\n\n", b"x" * 300, b"event: a\ndata: {}\n\n"]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body) + b"0\r\n\r\n"
    decoder = client.ChunkedDecoder()

    out = b"".join(decoder.feed(piece) for piece in _split(wire, cuts))

    assert out == b"".join(body)
    assert decoder.ended


@given(st.lists(st.integers(min_value=0), max_size=8))
def test_ws_frames_decode_however_the_bytes_arrive(cuts: list[int]) -> None:
    deflate = zlib.compressobj(wbits=-12)
    compressed = [json.dumps({"n": i, "pad": "x" * 200 * i}).encode() for i in range(3)]
    wire = b""
    for text in compressed:  # context takeover: one compressor for all messages
        data = deflate.compress(text) + deflate.flush(zlib.Z_SYNC_FLUSH)
        wire += _server_frame(data[:-4], rsv1=True)
    wire += _server_frame(b"plain, uncompressed")  # allowed with permessage-deflate
    wire += _server_frame(b"frag", fin=False) + _server_frame(b"mented", 0x0)
    wire += _server_frame(b"ping!", 0x9)
    wire += _server_frame(b"x" * 70_000)
    reader = client.WsReader(deflate=True)

    messages, replies = [], b""
    for piece in _split(wire, cuts):
        got, reply, closed = reader.feed(piece)
        messages += got
        replies += reply
        assert not closed

    assert messages == [*compressed, b"plain, uncompressed", b"fragmented", b"x" * 70_000]
    # The pong echoes the ping's payload, masked as a client frame must be.
    assert replies[:2] == bytes([0x8A, 0x80 | 5])
    mask, masked = replies[2:6], replies[6:11]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(masked)) == b"ping!"


def test_a_close_frame_is_answered_and_ends_the_stream() -> None:
    reader = client.WsReader(deflate=False)
    messages, reply, closed = reader.feed(
        _server_frame(b"last") + _server_frame((1001).to_bytes(2, "big"), 0x8)
    )
    assert (messages, closed) == ([b"last"], True)
    assert reply[0] == 0x88


def test_client_frames_are_masked_text() -> None:
    frame = client.ws_frame(b'{"action": "ping"}')
    assert frame[0] == 0x81
    assert frame[1] == 0x80 | 18
    mask = frame[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == b'{"action": "ping"}'
