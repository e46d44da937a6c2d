"""Confinement of every process a job starts: a clean environment and a bubblewrap sandbox.

Agents are untrusted code with a model behind them, and the gates run what they wrote. So no
command a job starts (an agent, a gate, the script agent's ``run``, a ``shell`` job) inherits
the server's environment, and each runs under ``bwrap`` (bubblewrap):

* the system is visible read-only (``/`` bound read-only), with a private ``/tmp``, ``/dev``
  and ``/proc``, in new PID, IPC and UTS namespaces, killed with its worker;
* the data dir (database, ``credentials.json``), the work dir (every task's worktree and the
  merge locks), the repository roots and the server's home directory are hidden behind empty
  read-only directories;
* only what the command needs is bound back: its writable paths (a task's worktree) and its
  read-only paths (the repository's ``.git``, so ``git status`` and ``git diff`` work; refs and
  objects cannot be changed, so an agent cannot move a branch: stitchwork commits its work);
* with ``network = false`` it gets a network namespace of its own, with loopback only.

The mode is ``STITCHWORK_SANDBOX``: ``auto`` (the default) confines every command and refuses
jobs when ``bwrap`` is missing or cannot start, saying how to install it; ``off`` is the explicit
opt-out (logged at start and shown by ``/api/v1/health``). There is no silent fallback.

Standard library only (and the error tree), like ``process``: every layer may use it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from stitchwork.errors import BackendUnavailable, Forbidden

# A private tmpfs in each sandbox: nothing another process can see or plant there.
SANDBOX_TMP = "/tmp"  # noqa: S108
SANDBOX_HOME = f"{SANDBOX_TMP}/home"
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap; Arch: pacman -S bubblewrap), or start the server with STITCHWORK_SANDBOX=off "
    "to run every job unconfined, with the server's access"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV_PREFIX = "STITCHWORK_"  # the server's own settings: never passed to a job


class SandboxMode(StrEnum):
    AUTO = "auto"
    OFF = "off"


class SandboxUnavailable(BackendUnavailable):
    """Jobs must be confined, and bubblewrap is missing or cannot start here (HTTP 503)."""

    title = "Sandbox unavailable"


def clean_env(
    declared: Mapping[str, str] | None = None,
    pass_env: Iterable[str] = (),
    *,
    home: str,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of a job's command: a small base, the variables the job, gate
    or profile declares, and the server variables it names in ``pass_env``.

    The base is ``PATH`` (the server's), ``HOME`` (``home``: in the sandbox a private
    directory), ``LANG=C.UTF-8``, ``TERM=dumb``, ``TMPDIR=/tmp`` and ``PYTHONUNBUFFERED=1``.
    No ``STITCHWORK_*`` variable is ever included, whatever is declared or named.
    """
    server = os.environ if source is None else source
    env = {
        "PATH": server.get("PATH", os.defpath),
        "HOME": home,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": SANDBOX_TMP,
        "PYTHONUNBUFFERED": "1",  # output streams live, in the order it was written
    }
    for name in pass_env:
        if name in server and not name.startswith(RESERVED_ENV_PREFIX):
            env[name] = server[name]
    for name, value in (declared or {}).items():
        if not name.startswith(RESERVED_ENV_PREFIX):
            env[name] = value
    return env


def check_env_names(names: Iterable[str], field: str) -> list[str]:
    """Why each of ``names`` cannot be a job's variable (empty: all fine)."""
    problems = []
    for name in names:
        if not _ENV_NAME.fullmatch(name):
            problems.append(f"{field}: {name[:64]!r} is not an environment variable name")
        elif name.startswith(RESERVED_ENV_PREFIX):
            problems.append(f"{field}: {name} is reserved: no STITCHWORK_* variable reaches a job")
    return problems


@dataclass(frozen=True)
class Confinement:
    """What one command may see and change.

    Attributes:
        writable: paths bound read-write (a task's worktree, a shell job's directory).
        readonly: paths bound read-only over the hidden ones (the repository's ``.git``).
        network: whether the command shares the host's network.
    """

    writable: tuple[Path, ...] = ()
    readonly: tuple[Path, ...] = ()
    network: bool = True


class Sandbox:
    """Wraps commands in ``bwrap`` per a ``Confinement`` (or, when ``off``, does nothing).

    Args:
        mode: ``auto`` or ``off``.
        hidden: directories no command may see (data dir, work dir, repository roots, home).
        bwrap: the ``bwrap`` executable (default: found on ``PATH``).
    """

    def __init__(
        self, mode: SandboxMode | str, *, hidden: Sequence[Path] = (), bwrap: str | None = None
    ) -> None:
        self.mode = SandboxMode(mode)
        self.hidden = _outermost(Path(os.path.abspath(p)) for p in hidden)
        self.bwrap = bwrap if bwrap is not None else shutil.which("bwrap")

    @property
    def enabled(self) -> bool:
        return self.mode is not SandboxMode.OFF

    def status(self) -> str:
        """``bwrap`` (confining), ``off`` (opted out) or ``unavailable`` (jobs refused)."""
        if not self.enabled:
            return "off"
        return "bwrap" if self.problem() is None else "unavailable"

    def problem(self) -> str | None:
        """Why commands cannot be confined here, or ``None``."""
        if not self.enabled:
            return None
        if self.bwrap is None:
            return "bubblewrap (bwrap) is not installed"
        return _probe(self.bwrap)

    def check(self) -> None:
        """Raise ``SandboxUnavailable`` (with what to do) unless commands can be confined."""
        problem = self.problem()
        if problem is not None:
            raise SandboxUnavailable(
                f"jobs run in a sandbox and {problem}: {INSTALL_HINT}", problem=problem
            )

    def wrap(self, argv: Sequence[str], confinement: Confinement, cwd: Path) -> list[str]:
        """``argv`` run under ``bwrap`` as ``confinement`` says, in ``cwd``; ``argv`` as it
        is when the sandbox is off. Raises ``SandboxUnavailable`` when it cannot be confined."""
        if not self.enabled:
            return list(argv)
        self.check()
        assert self.bwrap is not None
        # bwrap needs a directory to mount on: what does not exist is hidden anyway. /tmp is
        # the sandbox's own already; a hidden directory inside it is mounted there read-only.
        tmp = Path(SANDBOX_TMP)
        hidden = [p for p in self.hidden if not _within(tmp, p) and p.is_dir()]
        args = [
            self.bwrap,
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", SANDBOX_TMP,
            "--dir", SANDBOX_HOME,
        ]  # fmt: skip
        if not confinement.network:
            args.append("--unshare-net")
        for path in hidden:
            args += ["--tmpfs", str(path)]
        for path in confinement.readonly:
            args += ["--ro-bind", str(path), str(path)]
        for path in confinement.writable:
            args += ["--bind", str(path), str(path)]
        for path in hidden:  # empty and read-only: writes there fail instead of vanishing
            args += ["--remount-ro", str(path)]
        return [*args, "--chdir", str(cwd), "--", *argv]


@dataclass(frozen=True)
class JobConfinement:
    """How a worker confines the commands of its jobs: the sandbox, the server variables every
    command gets (``STITCHWORK_PASS_ENV``) and the repository roots.

    Args:
        sandbox: the sandbox (mode ``off``: commands run unconfined, but still with a clean
            environment).
        pass_env: names of server variables every job's commands get.
        repo_roots: directories repositories and shell jobs' directories must be inside.
        readable: paths every confined command may read even when they lie in a hidden
            directory (stitchwork's own Python, which gates and tests often run).
    """

    sandbox: Sandbox
    pass_env: tuple[str, ...] = ()
    repo_roots: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()

    def env(
        self, declared: Mapping[str, str] | None = None, pass_env: Iterable[str] = ()
    ) -> dict[str, str]:
        """A command's complete environment (see ``clean_env``)."""
        return clean_env(declared, (*self.pass_env, *pass_env), home=self.home())

    def home(self) -> str:
        """``HOME`` of a job's commands: a private directory in the sandbox; unconfined, a
        scratch directory of this user's (never the server's own home)."""
        if self.sandbox.enabled:
            return SANDBOX_HOME
        path = Path(tempfile.gettempdir()) / f"stitchwork-home-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        return str(path)

    def wrapper(
        self, confinement: Confinement, cwd: Path
    ) -> Callable[[list[str]], list[str]] | None:
        """What ``run_process(wrap=...)`` takes to run a command confined (``None``: off)."""
        if not self.sandbox.enabled:
            return None
        walls = replace(confinement, readonly=(*self.readable, *confinement.readonly))
        return functools.partial(self.sandbox.wrap, confinement=walls, cwd=cwd)

    def inside_roots(self, path: str, *, field: str) -> Path:
        """``path`` resolved, if it is inside a repository root; else ``Forbidden`` (403),
        which never says whether the path exists."""
        return inside_roots(path, self.repo_roots, field=field)


def inside_roots(path: str, roots: Sequence[Path], *, field: str) -> Path:
    """``path`` resolved, if it is inside one of ``roots``; else ``Forbidden`` (403).

    The lexical check comes first, so nothing outside the roots is ever looked up: the answer
    is the same whether the path exists or not.
    """
    refused = Forbidden(
        f"{field} is outside the repository roots this server allows "
        "(STITCHWORK_REPO_ROOTS); ask its operator to add the directory",
        field=field,
    )
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise refused
    lexical = Path(os.path.normpath(path))
    if not any(_within(lexical, root) for root in roots):
        raise refused
    real = Path(os.path.realpath(lexical))  # a symlink inside a root may point out of it
    if not any(_within(real, Path(os.path.realpath(root))) for root in roots):
        raise refused
    return real


def interpreter_paths() -> tuple[Path, ...]:
    """Where this Python lives (its environment and the installation it comes from): jobs
    may run ``python`` from it even when it lies under a hidden directory (a home)."""
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return tuple(sorted(p for p in prefixes if p != Path("/")))


@functools.cache
def _probe(bwrap: str) -> str | None:
    """Whether ``bwrap`` can start a sandbox here (user namespaces may be disabled)."""
    try:
        done = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap cannot start: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot start a sandbox here ({detail[-1] if detail else done.returncode})"
    return None


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    """The paths, without those inside another one (hiding the outer one hides them too)."""
    ordered = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if path != Path("/") and not any(_within(path, k) for k in kept):
            kept.append(path)
    return tuple(kept)
