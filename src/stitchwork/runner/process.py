"""Run a command in its own process group, stream its output, and never leave any of it behind.

Shared by the ``shell`` job type, the agent adapters, the script agent and the gates. The
command gets a new session, so it and everything it starts form one process group. Whatever
ends the run — the command exiting, a timeout, a stop request or the caller being cancelled —
the whole group is stopped (SIGTERM, then SIGKILL after a grace period) and waited for, so a
background process the command started can neither outlive it nor keep writing into a worktree
that is being removed.

Two more guarantees hold when the worker process itself dies, which no ``finally`` survives:

* The group's first process is the guard (``runner/guard.py``): it holds the read end of a
  pipe whose write end only this process holds, and SIGKILLs its group when that pipe closes,
  that is when this process dies, SIGKILL included.
* When a ``GroupRecorder`` is set in the context (the worker sets one per job), every group is
  recorded before the command runs on and marked ended once it is gone, so a janitor can find
  and kill what a dead worker left (see ``runtime/janitor.py``).

This module depends on the standard library only, so every layer may use it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import errno
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stitchwork.errors import StitchworkError

KILL_GRACE_S = 2.0
EXIT_POLL_S = 0.02
READ_CHUNK = 65_536
DEFAULT_TAIL_CHARS = 4_000

OutputCallback = Callable[[str], Awaitable[None]]
GUARD_SCRIPT = Path(__file__).with_name("guard.py")


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    """A process group a command runs in.

    Attributes:
        pgid: The group's id: the pid of its first process (the guard).
        leader_start: When that process started, in clock ticks since boot (``None`` without
            ``/proc``): with ``pgid`` it names the group even after the pid is reused.
    """

    pgid: int
    leader_start: int | None


class GroupRecorder(Protocol):
    """Records the process groups of one job attempt where other processes can see them."""

    async def started(self, group: ProcessGroup) -> object:
        """Record a new group; returns a token for ``ended``. Raising stops the command."""
        ...

    async def ended(self, token: object) -> None:
        """Record that the group is gone. Must not raise: a record left open is closed by the
        janitor of this host once it finds the group gone."""
        ...


group_recorder: contextvars.ContextVar[GroupRecorder | None] = contextvars.ContextVar(
    "stitchwork_group_recorder", default=None
)
# Applied to every chunk of output before anyone sees it (the worker sets a ``Redactor``).
output_filter: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "stitchwork_output_filter", default=None
)


class ProcessStartError(StitchworkError):
    """The command could not be started at all (missing binary, bad ``cwd``, no permission).

    Kept apart from other ``OSError``s so that a caller can tell "the command does not exist",
    which no retry fixes, from a failure while its output was being handled.
    """

    title = "Command could not start"

    def __init__(self, command: str | Sequence[str], cause: OSError) -> None:
        super().__init__(f"could not start command: {cause}", command=_label(command))
        self.cause = cause


@dataclass(frozen=True)
class ProcessResult:
    """How a run ended.

    Attributes:
        returncode: The command's exit status; negative when a signal ended it (``-15`` after
            SIGTERM). ``None`` only if it could not be reaped within the grace period.
        timed_out: The timeout ended the run.
        stopped: The ``stop`` event ended the run.
        output_tail: The last ``tail_chars`` characters of the output.
        duration_s: From the start of the command until its group was gone.
    """

    returncode: int | None
    timed_out: bool
    stopped: bool
    output_tail: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """Whether the command ran to its end on its own and exited with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.stopped


class OutputTail:
    """The last ``limit`` characters of a stream, kept in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: deque[str] = deque()
        self._size = 0

    def add(self, text: str) -> None:
        """Append ``text``, dropping whole chunks that fell out of the window."""
        if not self.limit:
            return
        self._chunks.append(text)
        self._size += len(text)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The kept characters, at most ``limit`` of them."""
        return "".join(self._chunks)[-self.limit :] if self.limit else ""


async def run_process(
    command: str | Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_output: OutputCallback | None = None,
    timeout_s: float | None = None,
    grace_s: float = KILL_GRACE_S,
    stop: asyncio.Event | None = None,
    tail_chars: int = DEFAULT_TAIL_CHARS,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> ProcessResult:
    """Run ``command`` in a new process group and stream its combined stdout and stderr.

    Output is decoded as UTF-8 (invalid bytes become U+FFFD, and so does NUL, which Postgres
    cannot store in text) and passed to ``on_output`` in chunks of whole lines. Only two kinds
    of chunk lack a final newline: the output's unterminated last line, and the pieces of a line
    longer than ``READ_CHUNK`` bytes, which is passed on without waiting for its end. A parser
    that needs whole lines must therefore buffer an unterminated piece until the next newline.

    The run ends when the command's own process exits, ``timeout_s`` passes, or ``stop`` is
    set. Then whatever is left of its process group is stopped: SIGTERM, SIGKILL after
    ``grace_s`` seconds, and this function returns only once no live process of the group is
    left. If the caller is cancelled, the group is stopped the same way before the
    ``CancelledError`` propagates.

    Args:
        command: A string runs through ``/bin/sh -c``; a sequence is executed directly.
        cwd: Working directory; the caller's when ``None``.
        env: The complete environment; the caller's when ``None``.
        on_output: Receives each chunk of output; its errors stop the command and propagate.
        timeout_s: Seconds the command may run; unlimited when ``None``.
        grace_s: Seconds between SIGTERM and SIGKILL, and for the output to drain after.
        stop: Setting it stops the command the same way as a timeout does.
        tail_chars: How many trailing characters of output to keep in the result.
        wrap: Turns the command's argv into the argv actually started (the sandbox); the
            command is checked as startable before.

    Returns:
        How the run ended, with the tail of its output.

    Raises:
        ProcessStartError: The command could not be started.
        ValueError: ``command`` is empty or names no program.
    """
    if not command or (not isinstance(command, str) and not command[0]):
        raise ValueError("command must not be empty")
    started = time.monotonic()
    proc = await _spawn(command, cwd=cwd, env=env, wrap=wrap)
    recorder = group_recorder.get()
    redact = output_filter.get()
    token: object = None
    group_cleared = False
    pump: asyncio.Task[None] | None = None
    exited: asyncio.Task[None] | None = None
    stop_wait: asyncio.Task[Any] | None = None
    timed_out = stopped = False
    tail = OutputTail(tail_chars)
    try:
        if recorder is not None:
            # Recorded before the command's output is read: a worker that dies from here on
            # leaves a row that names the group (and the guard kills it anyway).
            token = await recorder.started(ProcessGroup(proc.pid, process_start_ticks(proc.pid)))

        async def deliver(text: str) -> None:
            if redact is not None:
                text = redact(text)
            tail.add(text)
            if on_output is not None:
                await on_output(text)

        pump = asyncio.create_task(_pump(proc, deliver))
        exited = asyncio.create_task(_exited(proc))
        stop_wait = asyncio.create_task(stop.wait()) if stop is not None else None
        timed_out, stopped = await _wait_for_end(pump, exited, stop_wait, timeout_s)
        # The command ended, or must end: nothing of its process group may outlive it.
        group_cleared = await kill_process_group(proc.pid, grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_exited(proc), grace_s)
        with contextlib.suppress(TimeoutError):
            # Re-raises an error of ``on_output``. A process that left the group (setsid) may
            # hold the pipe open for ever, so the wait for the last output is bounded.
            await asyncio.wait_for(asyncio.shield(pump), grace_s)
    finally:
        for task in (pump, exited, stop_wait):
            if task is not None:
                task.cancel()
        if not group_cleared:  # we were cancelled or failed: leave nothing behind
            group_cleared = await kill_process_group(proc.pid, grace_s)
        if recorder is not None and token is not None and group_cleared:
            # A group that could not be killed stays recorded as live: the janitor retries.
            await recorder.ended(token)
    return ProcessResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        stopped=stopped,
        output_tail=tail.text(),
        duration_s=time.monotonic() - started,
    )


_death_pipe: tuple[int, int, int] | None = None  # (owner pid, read end, write end)


def _death_fd() -> int:
    """The read end of this process's death pipe; only this process holds the write end.

    Both ends are close-on-exec, so no command inherits the write end; the read end is passed
    to each guard explicitly. Made anew in a forked child, whose parent's pipe is not its own.
    """
    global _death_pipe
    if _death_pipe is None or _death_pipe[0] != os.getpid():
        read, write = os.pipe()
        _death_pipe = (os.getpid(), read, write)
    return _death_pipe[1]


def _preflight(
    command: str | Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
) -> None:
    """Refuse, as starting it directly would, a command that cannot start: the guard would
    only report it as exit code 127."""
    if cwd is not None and not os.path.isdir(cwd):
        reason = errno.ENOTDIR if os.path.exists(cwd) else errno.ENOENT
        raise ProcessStartError(command, OSError(reason, os.strerror(reason), os.fspath(cwd)))
    if isinstance(command, str):
        return
    program = os.fspath(command[0])
    if os.sep in program:
        path = program if cwd is None or os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(path):
            raise ProcessStartError(
                command, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
            )
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise ProcessStartError(
                command, PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
            )
        return
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        raise ProcessStartError(
            command, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        )


async def _spawn(
    command: str | Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    wrap: Callable[[list[str]], list[str]] | None,
) -> asyncio.subprocess.Process:
    _preflight(command, cwd, env)
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [*map(str, command)]
    if wrap is not None:
        argv = wrap(argv)
    death = _death_fd()
    guarded = [sys.executable, "-I", "-S", str(GUARD_SCRIPT), str(death), "--", *argv]
    try:
        return await asyncio.create_subprocess_exec(
            *guarded,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=(death,),
        )
    except OSError as exc:
        raise ProcessStartError(command, exc) from exc


async def _wait_for_end(
    pump: asyncio.Task[None],
    exited: asyncio.Task[None],
    stop_wait: asyncio.Task[Any] | None,
    timeout_s: float | None,
) -> tuple[bool, bool]:
    """Wait until the command exits, is stopped, times out or its output handler fails.

    Returns ``(timed_out, stopped)``.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    waiting: set[asyncio.Task[Any]] = {pump, exited}
    if stop_wait is not None:
        waiting.add(stop_wait)
    while True:
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait(
            waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if exited in done:  # checked first: an exit that races a stop or timeout still counts
            return False, False
        if stop_wait is not None and stop_wait in done:
            return False, True
        if pump in done:
            if pump.exception() is not None:
                return False, False  # the caller re-raises it once the group is stopped
            # The command closed its output but runs on; keep waiting for its exit.
            waiting.discard(pump)
            continue
        return True, False


async def _pump(proc: asyncio.subprocess.Process, deliver: OutputCallback) -> None:
    """Read raw chunks (a line of any length cannot break the reader) and pass on whole lines."""
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = b""

    async def emit(data: bytes, final: bool = False) -> None:
        text = decoder.decode(data, final).replace("\x00", "\ufffd")
        if text:
            await deliver(text)

    while chunk := await proc.stdout.read(READ_CHUNK):
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut:
            await emit(data[:cut])
        pending = data[cut:]
        if len(pending) > READ_CHUNK:  # an endless line: pass it on without waiting for "\n"
            await emit(pending)
            pending = b""
    await emit(pending, final=True)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Return when the command's own process has exited. ``proc.wait()`` would also wait
    for every process that inherited its stdout, which a background child may hold forever."""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio offers no event for this
        await asyncio.sleep(EXIT_POLL_S)


async def kill_process_group(pgid: int, grace_s: float = KILL_GRACE_S) -> bool:
    """SIGTERM process group ``pgid``, then SIGKILL what is left of it after ``grace_s``.

    Args:
        pgid: The group's id (the pid of the process started with a new session).
        grace_s: Seconds to wait for the group to end after each signal.

    Returns:
        Whether the group is gone (zombies aside, see ``process_group_alive``).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True  # the group is empty
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_group_gone(pgid), grace_s)
            return True
    return False


async def _group_gone(pgid: int) -> None:
    while process_group_alive(pgid):  # noqa: ASYNC110 - no event exists for "a group emptied"
        await asyncio.sleep(EXIT_POLL_S)


def process_group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running.

    Zombies do not count: they are dead, and whoever adopted them (often PID 1) reaps them in
    its own time.
    """
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:  # no /proc: fall back to the signal probe, which also sees zombies
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited meanwhile
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; ``None`` if it is gone or
    there is no ``/proc``. A pid is reused, a (pid, start) pair is not (until a reboot)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def boot_id() -> str:
    """This boot of this machine: recorded process groups of another boot are gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _label(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)
