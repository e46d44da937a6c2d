"""uuid7 ids: time-ordered, strictly increasing within a process, RFC 9562 version 7."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest

from stitchwork.storage import types
from stitchwork.storage.types import _Uuid7, new_id


def _assert_uuid7(ids: list[uuid.UUID]) -> None:
    assert all(i.version == 7 for i in ids)
    assert all(i.variant == uuid.RFC_4122 for i in ids)


def test_a_burst_of_ten_thousand_ids_is_strictly_increasing_and_version_7() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(str(a) < str(b) for a, b in itertools.pairwise(ids))  # text order too
    _assert_uuid7(ids)


def test_id_timestamp_is_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    ms = new_id().int >> 80
    after = time.time_ns() // 1_000_000
    # A burst may borrow a few milliseconds ahead when the 12-bit counter runs out.
    assert before <= ms <= after + 5


def test_ids_stay_increasing_when_the_clock_stands_still(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = 1_767_225_600_000 * 1_000_000
    monkeypatch.setattr(types.time, "time_ns", lambda: frozen)
    gen = _Uuid7()
    ids = [gen() for _ in range(10_000)]  # far more than 4096: the counter overflows
    assert all(a < b for a, b in itertools.pairwise(ids))
    _assert_uuid7(ids)


def test_ids_stay_increasing_when_the_clock_goes_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_767_225_600_000 * 1_000_000]

    def backwards() -> int:
        now[0] -= 1_000_000  # one millisecond back on every call
        return now[0]

    monkeypatch.setattr(types.time, "time_ns", backwards)
    gen = _Uuid7()
    ids = [gen() for _ in range(2_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_from_many_threads_are_unique() -> None:
    gen = _Uuid7()
    out: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def burst(i: int) -> None:
        out[i].extend(gen() for _ in range(2_500))

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for chunk in out for i in chunk]
    assert len(set(flat)) == 10_000
    for chunk in out:  # each thread sees its own ids in creation order
        assert chunk == sorted(chunk)
