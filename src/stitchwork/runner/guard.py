"""The process-group guard: a command's first process, which takes its group down with the worker.

``run_process`` starts every command as ``python -I -S guard.py FD -- ARGV...`` in a new
session. The guard starts ``ARGV`` as its child (same process group), then waits for one of
two things:

* the child exits: the guard exits the same way (same exit code, or the same signal), so the
  caller sees the command's own status;
* ``FD``, the read end of a pipe whose only write end the worker process holds, reaches end of
  file: the worker died (even by SIGKILL, which no handler sees), and the guard SIGKILLs its
  whole process group, itself included. Nothing the command started in its group outlives the
  worker by more than the time the kernel takes to close a dead process's files.

The guard ignores SIGTERM, SIGINT and SIGHUP: a stop is sent to the whole group, reaches the
command, and the guard reports how the command ended. SIGKILL still ends it.

Standard library only, and nothing imported beyond what it needs: it runs with ``-S`` (no
``site``) for every command, so its start-up time is paid by every gate and agent run.
"""

from __future__ import annotations

import os
import select
import signal
import sys

_EXEC_FAILED = 127


def _child(argv: list[str]) -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # restore them as subprocess does, or `yes | head` ends in "Broken pipe" errors.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - running the command is the guard's purpose
    except OSError as exc:
        os.write(2, f"stitchwork guard: cannot run {argv[0]!r}: {exc.strerror}\n".encode())
    os._exit(_EXEC_FAILED)


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal could not end us (SIGKILL always does)
    os._exit(os.waitstatus_to_exitcode(status))


def main(args: list[str]) -> None:
    """``FD -- ARGV...``: run ARGV, end with it, and kill the group when FD closes."""
    if len(args) < 3 or args[1] != "--":
        os.write(2, b"usage: guard.py FD -- COMMAND [ARG...]\n")
        os._exit(2)
    death_fd = int(args[0])
    argv = args[2:]
    os.set_inheritable(death_fd, False)  # the command itself never holds the pipe
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        _child(argv)
    try:
        child_fd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll instead
        child_fd = None
    while True:
        watch = [death_fd] if child_fd is None else [death_fd, child_fd]
        ready, _, _ = select.select(watch, [], [], 0.05 if child_fd is None else None)
        if death_fd in ready and not os.read(death_fd, 1):
            os.killpg(0, signal.SIGKILL)  # the worker is gone: so is everything it started
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _exit_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
