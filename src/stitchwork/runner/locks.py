"""Exclusive locks that hold across processes: ``flock`` on a lock file, polled so the event
loop never blocks, queued by an ``asyncio.Lock`` within a process."""

from __future__ import annotations

import asyncio
import fcntl
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

LOCK_POLL_MIN_S = 0.005
LOCK_POLL_MAX_S = 0.1

# One asyncio.Lock per event loop and lock file: asyncio locks must not cross loops.
_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def file_lock(lock_file: Path) -> AsyncIterator[None]:
    """Hold ``lock_file`` exclusively, across processes.

    Within a process an ``asyncio.Lock`` queues the waiters; across processes an exclusive
    ``flock`` does. The flock is polled without blocking, with short sleeps, so the event loop
    never blocks; the kernel releases it if the holder dies. The lock file is never deleted:
    deleting it would let two holders lock two inodes. Not reentrant.
    """
    await asyncio.to_thread(lock_file.parent.mkdir, parents=True, exist_ok=True)
    locks = _local_locks.setdefault(asyncio.get_running_loop(), {})
    async with locks.setdefault(lock_file, asyncio.Lock()):
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            delay = LOCK_POLL_MIN_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOCK_POLL_MAX_S)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
