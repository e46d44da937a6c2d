"""The repository config file ``stitchwork.toml``: gates, quality rails, agent profiles, merge.

The file is read with stdlib ``tomllib`` and validated whole. Every problem is an
``InvalidRepoConfig`` naming the file and the dotted key (``gates.lint.timeout``) and showing the
right form. Unknown keys are errors, so a typo never silently falls back to a default. A
repository without the file gets ``RepoConfig.default()``. Every key is optional::

    max_gate_attempts = 3             # 1-10 tries for the agent to make the gates pass
    gate_parallelism = 4              # 1-64 gates run at once
    default_profile = "claude"        # needed when [profiles] defines more than one profile

    [gates.lint]                      # 1-64 of [A-Za-z0-9_-]; "claims" is the built-in gate
    command = "ruff check ."          # required; a string runs through the shell, a list as argv
    timeout = "2m"                    # "90s", "2m", "1h", "1h30m" or integer seconds; 10m
    coverage_min = 80                 # percent, 0-100; only together with coverage_report
    coverage_report = "coverage.xml"  # worktree-relative: Cobertura *.xml, coverage.py *.json
    env = { PYTHONHASHSEED = "0" }    # variables the gate's command gets, string values
    pass_env = ["PIP_INDEX_URL"]      # the server's variables it gets too (never STITCHWORK_*)
    network = true                    # false: no network in its sandbox
    read_paths = ["/opt/tools"]       # absolute paths it may read besides the system

    [quality_rails]                   # job type -> gates that must pass before it completes
    agent-task = ["lint"]             # the built-in "claims" gate is always added to agent-task

    [profiles.claude]                 # when present, replaces the built-in "script" profile
    adapter = "command"               # "command" (default) or "script" (scripted, no command)
    command = "claude -p {prompt}"    # placeholders {prompt} {prompt_file} {worktree} {issue_ref}
    capabilities = ["repo:read"]      # see ``stitchwork.domain.guards``; "git:*" for all of git
    timeout = "30m"                   # default 30m
    output_format = "text"            # "text" (default) or "claude-stream-json"
    env = { CI = "1" }                # variables the agent gets, string values
    pass_env = ["ANTHROPIC_API_KEY"]  # the server's variables it gets too (never STITCHWORK_*)
    network = false                   # no network in its sandbox (default true)
    read_paths = ["/opt/models"]      # absolute paths it may read besides the system
    write_paths = ["/var/cache/x"]    # absolute paths it may change besides its worktree

    [merge]
    target_branch = "main"            # default "main"
    strategy = "merge"                # "merge" (default), "rebase" or "branch-only"

After a rebase onto a target branch that moved, the gates always run again: there is no
option to merge rebased work its gates never saw (quality rails cannot be bypassed).

Timeouts are 1 s to 24 h. The dataclasses check and normalise their own fields (``"2m"`` becomes
a ``timedelta``, a list a tuple), so the loader only rejects unknown keys and a config built in
code obeys the same rules; its errors name the source ``IN_CODE``.
"""

from __future__ import annotations

import re
import shlex
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from difflib import get_close_matches
from enum import StrEnum
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

from stitchwork.domain import guards
from stitchwork.errors import InvalidRepoConfig

CONFIG_FILE = "stitchwork.toml"
IN_CODE = "<RepoConfig>"
CLAIMS_GATE = "claims"
SCRIPT_PROFILE = "script"
PLACEHOLDERS = ("prompt", "prompt_file", "worktree", "issue_ref")
DEFAULT_GATE_TIMEOUT = timedelta(minutes=10)
DEFAULT_AGENT_TIMEOUT = timedelta(minutes=30)
MAX_TIMEOUT = timedelta(hours=24)
MAX_GATE_ATTEMPTS = 10
MAX_GATE_PARALLELISM = 64
MAX_CONFIG_CHARS = 1_000_000
COVERAGE_FORMATS = (".xml", ".json")

_E = TypeVar("_E", bound=StrEnum)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_RE = re.compile(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_DURATION_FORM = 'write integer seconds (120) or a string such as "90s", "2m", "1h" or "1h30m"'
_COMMAND_FORM = 'write command = "pytest -q" or command = ["pytest", "-q"]'
_TOML_AT_RE = re.compile(r" \(at line ([0-9]+), column ([0-9]+)\)$")
# What git check-ref-format accepts, minus its rarely wanted corners.
_BRANCH_RE = re.compile(
    r"(?!-|\.|.*\.\.|.*//|.*@\{|.*/\.|.*\.lock\Z)[^\s~^:?*\[\\\x00-\x1f\x7f]+(?<![/.])"
)
_SECTIONS = ("gates", "quality_rails", "profiles", "merge")
_TOP_KEYS = ("max_gate_attempts", "gate_parallelism", "default_profile", *_SECTIONS)
_ENVIRONMENT_KEYS = ("env", "pass_env", "network")
_GATE_KEYS: tuple[str, ...] = ("command", "timeout", "coverage_min", "coverage_report")
_GATE_KEYS += (*_ENVIRONMENT_KEYS, "read_paths")
_PROFILE_KEYS: tuple[str, ...] = ("adapter", "command", "capabilities", "timeout")
_PROFILE_KEYS += ("output_format", *_ENVIRONMENT_KEYS, "read_paths", "write_paths")
_MERGE_KEYS = ("target_branch", "strategy")


class AgentAdapter(StrEnum):
    COMMAND = "command"
    SCRIPT = "script"


class OutputFormat(StrEnum):
    TEXT = "text"
    CLAUDE_STREAM_JSON = "claude-stream-json"


class MergeStrategy(StrEnum):
    MERGE = "merge"
    REBASE = "rebase"
    BRANCH_ONLY = "branch-only"


@dataclass(frozen=True, slots=True)
class GateConfig:
    """A user gate: a command that must exit 0, optionally with a minimum coverage."""

    name: str
    command: tuple[str, ...] | str
    timeout: timedelta = DEFAULT_GATE_TIMEOUT
    coverage_min: float | None = None
    coverage_report: str | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    pass_env: tuple[str, ...] = ()
    network: bool = True
    read_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        at = _check_name(self.name, "gates")
        if self.name.casefold() == CLAIMS_GATE:
            _fail(at, f"{CLAIMS_GATE!r} is the built-in claims gate; name your gate differently")
        _set(self, "command", _command(self.command, f"{at}.command"))
        _set(self, "timeout", _duration(self.timeout, f"{at}.timeout"))
        if (self.coverage_min is None) != (self.coverage_report is None):
            missing = "coverage_report" if self.coverage_report is None else "coverage_min"
            _fail(
                f"{at}.{missing}",
                'is missing; write both coverage_min = 80 and coverage_report = "coverage.xml"',
            )
        if self.coverage_min is not None:
            percent = self.coverage_min
            if (
                isinstance(percent, bool)
                or not isinstance(percent, int | float)
                or not (0 <= percent <= 100)
            ):
                _fail(f"{at}.coverage_min", f"must be a percentage 0-100, got {percent!r}")
            _set(self, "coverage_min", float(percent))
            _set(self, "coverage_report", _report_path(self.coverage_report, at))
        _set_environment(self, at)
        _set(self, "read_paths", _absolute_paths(self.read_paths, f"{at}.read_paths"))


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """How to run an agent: the adapter, its command template, capabilities and limits.

    A string command is split like a shell would (``shlex``) *before* placeholders are filled
    in and is never run by a shell: the prompt is untrusted issue text, and this way it always
    stays exactly one argument. ``render_argv`` does the substitution.
    """

    name: str
    adapter: AgentAdapter = AgentAdapter.COMMAND
    command: tuple[str, ...] | str = ()
    capabilities: frozenset[str] = frozenset()
    timeout: timedelta = DEFAULT_AGENT_TIMEOUT
    output_format: OutputFormat = OutputFormat.TEXT
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    pass_env: tuple[str, ...] = ()
    network: bool = True
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        at = _check_name(self.name, "profiles")
        _set(self, "adapter", _enum(AgentAdapter, self.adapter, f"{at}.adapter"))
        _set(self, "output_format", _enum(OutputFormat, self.output_format, f"{at}.output_format"))
        if self.adapter == AgentAdapter.SCRIPT:
            if isinstance(self.command, str) or self.command:
                _fail(
                    f"{at}.command",
                    'adapter "script" takes no command; remove it or write adapter = "command"',
                )
        elif self.command in ((), []):
            _fail(f"{at}.command", f'is missing; adapter "command" needs one; {_COMMAND_FORM}')
        else:
            _set(self, "command", _command(self.command, f"{at}.command"))
            for part in _split(self.command, f"{at}.command"):
                _check_template(part, f"{at}.command")
        capabilities = self.capabilities
        if not isinstance(capabilities, list | tuple | set | frozenset):
            _fail(
                f"{at}.capabilities",
                f'must be an array such as ["repo:read"], got {capabilities!r}',
            )
        for capability in sorted(capabilities, key=repr):  # sorted: the same error every time
            if problem := guards.capability_problem(capability):
                _fail(f"{at}.capabilities", problem)
        _set(self, "capabilities", frozenset(capabilities))
        _set(self, "timeout", _duration(self.timeout, f"{at}.timeout"))
        _set_environment(self, at)
        for key in ("read_paths", "write_paths"):
            _set(self, key, _absolute_paths(getattr(self, key), f"{at}.{key}"))

    def render_argv(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """The command's argv with placeholders replaced by ``values`` (``()`` for scripts).

        Raises:
            ValueError: ``values`` lacks a placeholder the command uses.
        """
        parts = _split(self.command, f"profiles.{self.name}.command")
        try:
            return tuple(part.format_map(values) for part in parts)
        except KeyError as exc:
            raise ValueError(f"no value for placeholder {{{exc.args[0]}}}") from None


@dataclass(frozen=True, slots=True)
class MergePolicy:
    """What happens to an agent's branch once its gates passed."""

    target_branch: str = "main"
    strategy: MergeStrategy = MergeStrategy.MERGE

    def __post_init__(self) -> None:
        branch = self.target_branch
        if not isinstance(branch, str) or not _BRANCH_RE.fullmatch(branch):
            _fail("merge.target_branch", f'{branch!r} is not a branch name; e.g. "main"')
        _set(self, "strategy", _enum(MergeStrategy, self.strategy, "merge.strategy"))

    @property
    def integrates(self) -> bool:
        """Whether finished work lands on ``target_branch`` (anything but branch-only)."""
        return self.strategy != MergeStrategy.BRANCH_ONLY


def _default_profiles() -> dict[str, AgentProfile]:
    # What an agent task needs, and merging it: the default config runs and merges tasks.
    capabilities = frozenset((*guards.JOB_TYPE_CAPABILITIES[guards.AGENT_TASK], guards.GIT_MERGE))
    return {SCRIPT_PROFILE: AgentProfile(SCRIPT_PROFILE, AgentAdapter.SCRIPT, (), capabilities)}


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """A repository's whole configuration; every field defaults to ``RepoConfig.default()``."""

    gates: Mapping[str, GateConfig] = field(default_factory=dict, hash=False)
    quality_rails: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    profiles: Mapping[str, AgentProfile] = field(default_factory=_default_profiles, hash=False)
    default_profile: str = SCRIPT_PROFILE
    merge: MergePolicy = field(default_factory=MergePolicy)
    max_gate_attempts: int = 3
    gate_parallelism: int = 4

    def __post_init__(self) -> None:
        for name, gate in _table(self.gates, "gates").items():
            if not isinstance(gate, GateConfig) or gate.name != name:
                _fail(f"gates.{name}", f"must be the GateConfig named {name!r}, got {gate!r}")
        known = {CLAIMS_GATE, *self.gates}
        rails: dict[str, tuple[str, ...]] = {guards.AGENT_TASK: ()}
        for job_type, names in _table(self.quality_rails, "quality_rails").items():
            at = _check_name(job_type, "quality_rails")
            rails[job_type] = _strings(names, at)
            for name in rails[job_type]:
                if name not in known:
                    defined = ", ".join(sorted(known))
                    _fail(at, f"unknown gate {name!r}; define [gates.{name}] or use: {defined}")
            if len(set(names)) != len(names):
                _fail(at, f"lists a gate twice: {names!r}")
        _set(self, "quality_rails", MappingProxyType(rails))
        _set(self, "gates", MappingProxyType(dict(self.gates)))
        if not _table(self.profiles, "profiles"):
            _fail("profiles", "defines no profile; add [profiles.<name>] or remove [profiles]")
        for name, profile in self.profiles.items():
            if not isinstance(profile, AgentProfile) or profile.name != name:
                _fail(f"profiles.{name}", f"must be the AgentProfile named {name!r}")
        if self.default_profile not in self.profiles:
            defined = ", ".join(sorted(self.profiles))
            _fail("default_profile", f"{self.default_profile!r} is not a profile; use: {defined}")
        _set(self, "profiles", MappingProxyType(dict(self.profiles)))
        for key, maximum in (
            ("max_gate_attempts", MAX_GATE_ATTEMPTS),
            ("gate_parallelism", MAX_GATE_PARALLELISM),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
                _fail(key, f"must be an integer from 1 to {maximum}, got {value!r}")

    @classmethod
    def default(cls) -> RepoConfig:
        """No user gates, only the claims gate for agent-task, the ``script`` profile."""
        return cls()

    def mandatory_gates(self, job_type: str) -> tuple[str, ...]:
        """The gates a ``job_type`` job must pass, built-in first; ``claims`` for agent jobs.

        The claims gate is added here rather than stored in ``quality_rails`` so that no
        configuration can leave it out.
        """
        builtin = (CLAIMS_GATE,) if job_type in guards.AGENT_JOB_TYPES else ()
        return tuple(dict.fromkeys((*builtin, *self.quality_rails.get(job_type, ()))))


def load_repo_config(text: str, *, source: str = CONFIG_FILE) -> RepoConfig:
    """Parse and validate the text of a ``stitchwork.toml``.

    Args:
        text: the file's contents.
        source: the name errors give for the file.

    Raises:
        InvalidRepoConfig: the text is not TOML or not a valid configuration.
    """
    if len(text) > MAX_CONFIG_CHARS:
        raise InvalidRepoConfig(source, None, f"is longer than {MAX_CONFIG_CHARS} characters")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib (3.11) puts the position only in its message: "... (at line 3, column 5)".
        reason, lines = str(exc), text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1  # "(at end of document)"
        if match := _TOML_AT_RE.search(reason):
            line, column = int(match[1]), int(match[2])
        reason = _TOML_AT_RE.sub("", reason).removesuffix(" (at end of document)")
        message = f"TOML syntax error at line {line}, column {column}: {reason}"
        raise InvalidRepoConfig(source, None, message, line=line, column=column) from None
    try:
        return _build(data)
    except InvalidRepoConfig as exc:
        raise InvalidRepoConfig(source, exc.key, exc.problem) from None


def _build(data: dict[str, Any]) -> RepoConfig:
    _check_keys(data, _TOP_KEYS, None)
    fields = dict(data)
    gates = {}
    for name, table in _table(data.get("gates", {}), "gates").items():
        _check_keys(table := _table(table, f"gates.{name}"), _GATE_KEYS, f"gates.{name}")
        if "command" not in table:
            _fail(f"gates.{name}.command", f"is missing; {_COMMAND_FORM}")
        gates[name] = GateConfig(name, **table)
    fields["gates"] = gates
    if "profiles" in data:
        profiles = {}
        for name, table in _table(data["profiles"], "profiles").items():
            _check_keys(
                table := _table(table, f"profiles.{name}"), _PROFILE_KEYS, f"profiles.{name}"
            )
            profiles[name] = AgentProfile(name, **table)
        if "default_profile" not in data and len(profiles) > 1:
            _fail("default_profile", f"is needed with several profiles; e.g. {min(profiles)!r}")
        fields["profiles"] = profiles
        fields.setdefault("default_profile", next(iter(profiles), SCRIPT_PROFILE))
    _check_keys(merge := _table(data.get("merge", {}), "merge"), _MERGE_KEYS, "merge")
    fields["merge"] = MergePolicy(**merge)
    return RepoConfig(**fields)


def _set_environment(obj: GateConfig | AgentProfile, at: str) -> None:
    """Check and normalise ``env``, ``pass_env`` and ``network`` of a gate or a profile."""
    env = _table(obj.env, f"{at}.env")
    for variable, value in env.items():
        _env_name(variable, f"{at}.env")
        if not isinstance(value, str):
            _fail(f"{at}.env.{variable}", f'must be a string, e.g. {variable} = "{value}"')
    _set(obj, "env", MappingProxyType(dict(env)))
    names = obj.pass_env
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        _fail(f"{at}.pass_env", f'must be an array of names such as ["API_KEY"], got {names!r}')
    for name in names:
        _env_name(name, f"{at}.pass_env")
    _set(obj, "pass_env", tuple(names))
    if not isinstance(obj.network, bool):
        _fail(f"{at}.network", f"must be true or false, got {obj.network!r}")


def _env_name(name: str, key: str) -> None:
    if not _ENV_RE.fullmatch(name):
        _fail(key, f"{name[:64]!r} is not an environment variable name")
    if name.startswith("STITCHWORK_"):
        _fail(key, f"{name} is reserved: no STITCHWORK_* variable ever reaches a job")


def _absolute_paths(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        _fail(key, f'must be an array of absolute paths such as ["/opt/x"], got {value!r}')
    for path in value:
        if not path.startswith("/") or "\0" in path or ".." in PurePosixPath(path).parts:
            _fail(key, f"{path[:200]!r} must be an absolute path without '..'")
    return tuple(value)


def _fail(key: str | None, problem: str) -> NoReturn:
    raise InvalidRepoConfig(IN_CODE, key, problem)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # how a frozen dataclass normalises its own fields


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(type(value), "an array" if isinstance(value, list | tuple) else "a value")


def _check_keys(table: Mapping[str, object], allowed: tuple[str, ...], at: str | None) -> None:
    for key in table:
        if key not in allowed:
            close = get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            _fail(
                f"{at}.{key}" if at else key, f"unknown key{hint} (allowed: {', '.join(allowed)})"
            )


def _check_name(name: object, table: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        _fail(f"{table}.{name}", f"{name!r} is not a valid name; use 1-64 of A-Z a-z 0-9 _ -")
    return f"{table}.{name}"


def _table(value: object, at: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(at, f"must be a table ([{at}] or {{ key = ... }}), got {_kind(value)}")
    return value


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        _fail(key, f'must be an array of strings such as ["a", "b"], got {value!r}')
    return tuple(value)


def _enum(enum: type[_E], value: object, key: str) -> _E:
    if not isinstance(value, str) or value not in tuple(member.value for member in enum):
        choices = ", ".join(f'"{member.value}"' for member in enum)
        _fail(key, f"must be one of {choices}, got {value!r}")
    return enum(value)


def _command(value: object, key: str) -> tuple[str, ...] | str:
    if isinstance(value, str):
        if not value.strip():
            _fail(key, f"is empty; {_COMMAND_FORM}")
        return value
    if not isinstance(value, list | tuple):
        _fail(key, f"must be a string or an array of strings, got {_kind(value)}; {_COMMAND_FORM}")
    parts = _strings(value, key)
    if not parts or not parts[0].strip():
        _fail(key, f"is empty or starts with an empty program; {_COMMAND_FORM}")
    return parts


def _duration(value: object, key: str) -> timedelta:
    if isinstance(value, timedelta):
        seconds: float = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value) if isinstance(value, str) and value else None
        if match is None:
            _fail(key, f"invalid duration {value!r}; {_DURATION_FORM}")
        hours, minutes, secs = (int(group or 0) for group in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    # Bounded before building the timedelta, which overflows on huge numbers.
    if seconds <= 0:
        _fail(key, f"must be positive, got {value!r}; {_DURATION_FORM}")
    if seconds > MAX_TIMEOUT.total_seconds():
        _fail(key, f"{value!r} is longer than the 24h limit; {_DURATION_FORM}")
    return timedelta(seconds=seconds)


def _report_path(report: object, at: str) -> str:
    key = f"{at}.coverage_report"
    if not isinstance(report, str):
        _fail(key, f'must be a string such as "coverage.xml", got {_kind(report)}')
    path = PurePosixPath(report)
    if "\\" in report or path.is_absolute() or ".." in path.parts or not path.parts:
        _fail(key, f'{report!r} must be a path inside the worktree, e.g. "coverage.xml"')
    if path.suffix.lower() not in COVERAGE_FORMATS:
        _fail(key, f"{report!r}: use a Cobertura .xml or a coverage.py .json report")
    return str(path)


def _split(command: tuple[str, ...] | str, key: str) -> tuple[str, ...]:
    if not isinstance(command, str):
        return command
    try:
        return tuple(shlex.split(command))
    except ValueError as exc:
        _fail(key, f"cannot be split into arguments: {exc}; check the quotes")


def _check_template(part: str, key: str) -> None:
    allowed = " ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    try:
        fields = [(n, s, c) for _, n, s, c in string.Formatter().parse(part) if n is not None]
    except ValueError as exc:
        _fail(key, f"{part!r}: {exc}; write {{{{ and }}}} for literal braces")
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            _fail(key, f"unknown placeholder {{{name}}} in {part!r}; use {allowed}")
        if spec or conversion:
            _fail(key, f"placeholder in {part!r} takes no conversion or format; write {{{name}}}")
