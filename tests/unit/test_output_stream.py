"""``OutputStream``: rate-limited, bounded writes of a step's output through a sink."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from stitchwork.runtime.output import OutputStream
from stitchwork.storage.steps import JobLost

INTERVAL_S = 0.05


@dataclass
class _Write:
    at: float
    chunk: str
    dropped: int


@dataclass
class _Sink:
    """Records every write; can be told to raise."""

    writes: list[_Write] = field(default_factory=list)
    raise_: BaseException | None = None
    calls: int = 0

    async def __call__(self, chunk: str, dropped: int) -> None:
        self.calls += 1
        if self.raise_ is not None:
            raise self.raise_
        self.writes.append(_Write(time.monotonic(), chunk, dropped))

    @property
    def text(self) -> str:
        return "".join(w.chunk for w in self.writes)


async def _until(predicate: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_first_write_of_an_idle_stream_goes_out_at_once() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=10)
    await stream.write("hello\n")
    await _until(lambda: sink.writes)
    assert [(w.chunk, w.dropped) for w in sink.writes] == [("hello\n", 0)]
    await stream.close()


async def test_burst_goes_out_as_at_most_one_write_per_interval() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=INTERVAL_S)
    written = []
    started = time.monotonic()
    for i in range(60):  # ~0.3 s of output, a line every 5 ms
        line = f"line {i}\n"
        written.append(line)
        await stream.write(line)
        await asyncio.sleep(0.005)
    await stream.close()
    elapsed = time.monotonic() - started

    assert sink.text == "".join(written)  # nothing lost, in order
    gaps = [b.at - a.at for a, b in itertools.pairwise(sink.writes)]
    assert all(gap >= INTERVAL_S * 0.9 for gap in gaps[:-1]), gaps  # close() may cut the last
    assert len(sink.writes) <= elapsed / INTERVAL_S + 2
    assert len(sink.writes) < 60 / 4  # batched: far fewer writes than lines


async def test_write_over_max_chunk_keeps_the_newest_text_and_reports_dropped_chars() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=10, max_chunk=10)
    await stream.write("0123456789ABCDE")
    await stream.close()
    assert [(w.chunk, w.dropped) for w in sink.writes] == [("56789ABCDE", 5)]


async def test_text_accumulated_during_the_interval_is_bounded_to_max_chunk() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=10, max_chunk=8)
    await stream.write("first")
    await _until(lambda: sink.writes)  # the idle stream wrote at once; now it must wait
    for piece in ("aaaa", "bbbb", "cccc", "dddd"):
        await stream.write(piece)
    await stream.close()
    assert [(w.chunk, w.dropped) for w in sink.writes] == [("first", 0), ("ccccdddd", 8)]


async def test_dropped_chars_are_reported_once_then_reset() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=INTERVAL_S, max_chunk=4)
    await stream.write("xxxxxxABCD")
    await _until(lambda: len(sink.writes) == 1)
    await stream.write("efg")
    await stream.close()
    assert [(w.chunk, w.dropped) for w in sink.writes] == [("ABCD", 6), ("efg", 0)]


async def test_close_flushes_the_rest_without_waiting_for_the_interval() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=30)
    await stream.write("a")
    await _until(lambda: sink.writes)
    await stream.write("b")
    await stream.write("c")
    started = time.monotonic()
    await stream.close()
    assert time.monotonic() - started < 1
    assert [w.chunk for w in sink.writes] == ["a", "bc"]


async def test_close_of_a_stream_that_never_flushed_writes_its_text() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=30)
    await stream.write("only")  # the flusher task has not run yet
    await stream.close()
    assert [w.chunk for w in sink.writes] == ["only"]


async def test_close_of_an_unused_stream_writes_nothing() -> None:
    sink = _Sink()
    stream = OutputStream(sink)
    await stream.close()
    assert sink.calls == 0


async def test_nothing_is_written_after_close() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=INTERVAL_S)
    await stream.write("before")
    await stream.close()
    await stream.write("after")
    await asyncio.sleep(INTERVAL_S * 3)
    await stream.close()
    assert [w.chunk for w in sink.writes] == ["before"]


async def test_nothing_is_written_after_close_of_a_stream_that_was_never_used() -> None:
    sink = _Sink()
    stream = OutputStream(sink, interval_s=INTERVAL_S)
    await stream.close()
    await stream.write("after")
    await asyncio.sleep(INTERVAL_S * 3)
    await stream.close()
    assert sink.calls == 0


async def test_sink_raising_job_lost_marks_the_stream_lost_and_calls_on_lost() -> None:
    sink = _Sink(raise_=JobLost("job j is no longer running under worker w"))
    lost_calls: list[bool] = []
    stream = OutputStream(sink, interval_s=INTERVAL_S, on_lost=lambda: lost_calls.append(True))
    await stream.write("x")
    await _until(lambda: stream.lost)
    assert lost_calls == [True]

    # A lost stream drops further output instead of writing for a job it no longer holds.
    await stream.write("y")
    await stream.close()
    assert sink.calls == 1
    assert lost_calls == [True]


async def test_sink_raising_another_error_is_logged_and_later_output_still_goes_out() -> None:
    sink = _Sink(raise_=RuntimeError("database hiccup"))
    stream = OutputStream(sink, interval_s=INTERVAL_S)
    await stream.write("lost chunk")
    await _until(lambda: sink.calls == 1)
    sink.raise_ = None
    await stream.write("next chunk")
    await stream.close()
    assert not stream.lost
    assert [w.chunk for w in sink.writes] == ["next chunk"]


async def test_empty_write_is_ignored() -> None:
    sink = _Sink()
    stream = OutputStream(sink)
    await stream.write("")
    await asyncio.sleep(0)
    await stream.close()
    assert sink.calls == 0
