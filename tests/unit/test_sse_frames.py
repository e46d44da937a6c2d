"""The streaming tests' SSE parser reads the wire format exactly, however the bytes are split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sse import Frame, SseFormatError, SseParser, parse_frames

STREAM = (
    b"retry: 3000\n\n"
    b'event: job.created\r\ndata: {"seq": 1}\r\nid: 1\r\n\r\n'
    b": ping\r\r"
    b"data: first line\ndata:second line\ndata: caf\xc3\xa9\n\n"
)


def test_fields_comments_and_retry_are_parsed_exactly() -> None:
    frames = parse_frames(STREAM)

    assert [(f.id, f.event, f.data, f.retry, f.comments) for f in frames] == [
        (None, None, None, 3000, []),
        ("1", "job.created", '{"seq": 1}', None, []),
        (None, None, None, None, ["ping"]),
        (None, None, "first line\nsecond line\ncaf\u00e9", None, []),
    ]
    assert frames[2].is_comment
    assert not frames[1].is_comment
    assert frames[1].json() == {"seq": 1}


def test_only_one_space_after_the_colon_is_dropped() -> None:
    (frame,) = parse_frames(b"data:  two spaces\nevent:x\n\n")
    assert (frame.data, frame.event) == (" two spaces", "x")


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_ends_lines_and_frames(newline: bytes) -> None:
    raw = b"id: 7" + newline + b"data: x" + newline + newline + b": ping" + newline + newline
    frames = parse_frames(raw)
    assert [(f.id, f.data, f.comments) for f in frames] == [("7", "x", []), (None, None, ["ping"])]


def test_blank_lines_between_frames_make_no_empty_frames() -> None:
    assert [f.id for f in parse_frames(b"\n\nid: 1\n\n\n\nid: 2\n\n")] == ["1", "2"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"ids: 1\n\n", "unknown field 'ids'"),
        (b"data\n\n", "line without a colon"),
        (b"retry: soon\n\n", "retry must be digits"),
        (b"id: 1\n", "unfinished frame"),
        (b"id: 1", "unfinished frame"),
    ],
)
def test_malformed_streams_are_errors_not_skipped(raw: bytes, problem: str) -> None:
    with pytest.raises(SseFormatError, match=problem):
        parse_frames(raw)


def test_a_frame_without_data_has_no_json() -> None:
    with pytest.raises(SseFormatError, match="no data"):
        Frame(id="1").json()


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_frames_do_not_depend_on_how_the_bytes_are_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    whole = parse_frames(STREAM)
    parser = SseParser()
    pieces = [parser.feed(STREAM[a:b]) for a, b in itertools.pairwise(bounds)]
    split = [frame for piece in pieces for frame in piece]

    assert [(f.id, f.event, f.data, f.retry, f.comments) for f in split] == [
        (f.id, f.event, f.data, f.retry, f.comments) for f in whole
    ]
    assert not parser.unfinished
