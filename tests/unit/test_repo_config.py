"""stitchwork.toml: the documented shape, defaults, every rejected input with its key path,
the built-in claims gate that no configuration can remove, file reading and coverage reports."""

from __future__ import annotations

import json
import os
import string
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stitchwork.domain.coverage import UnreadableCoverageReport, parse_coverage
from stitchwork.domain.repo_config import (
    CLAIMS_GATE,
    IN_CODE,
    MAX_CONFIG_CHARS,
    AgentAdapter,
    AgentProfile,
    GateConfig,
    MergePolicy,
    MergeStrategy,
    OutputFormat,
    RepoConfig,
    load_repo_config,
)
from stitchwork.errors import InvalidRepoConfig, InvalidRequest
from stitchwork.services.agent_tasks import read_repo_config

EXAMPLE = """
max_gate_attempts = 3
[gates.lint]
command = "ruff check ."
timeout = "2m"          # also accept integer seconds
[gates.tests]
command = ["pytest", "-q"]
coverage_min = 80
coverage_report = "coverage.xml"
[quality_rails]
agent-task = ["lint", "tests"]
[profiles.claude]
adapter = "command"
command = "claude -p {prompt} --output-format stream-json --verbose"
output_format = "claude-stream-json"
capabilities = ["repo:read", "repo:write", "git:commit", "shell:exec"]
timeout = "30m"
[merge]
target_branch = "main"
strategy = "merge"
"""
AGENT_CAPS = frozenset({"repo:read", "repo:write", "git:commit", "shell:exec"})
GATE = '[gates.t]\ncommand = "x"\n'
PROFILE = '[profiles.p]\ncommand = "agent {prompt}"\n'


def _rejects(text: str, key: str | None, *words: str) -> InvalidRepoConfig:
    with pytest.raises(InvalidRepoConfig) as info:
        load_repo_config(text)
    error = info.value
    assert error.key == key
    assert error.source == "stitchwork.toml"
    where = f"stitchwork.toml: {key}: " if key else "stitchwork.toml: "
    assert error.message.startswith(where)
    for word in words:
        assert word in error.message
    return error


# --- good paths ----------------------------------------------------------------------------


def test_the_documented_example_loads_into_exactly_these_dataclasses() -> None:
    config = load_repo_config(EXAMPLE)

    assert config == RepoConfig(
        gates={
            "lint": GateConfig("lint", "ruff check .", timeout=timedelta(minutes=2)),
            "tests": GateConfig(
                "tests", ("pytest", "-q"), coverage_min=80.0, coverage_report="coverage.xml"
            ),
        },
        quality_rails={"agent-task": ("lint", "tests")},
        profiles={
            "claude": AgentProfile(
                "claude",
                AgentAdapter.COMMAND,
                "claude -p {prompt} --output-format stream-json --verbose",
                AGENT_CAPS,
                timedelta(minutes=30),
                OutputFormat.CLAUDE_STREAM_JSON,
            )
        },
        default_profile="claude",
        merge=MergePolicy("main", MergeStrategy.MERGE),
        max_gate_attempts=3,
        gate_parallelism=4,
    )
    assert config.gates["tests"].timeout == timedelta(minutes=10)  # the default
    assert config.mandatory_gates("agent-task") == ("claims", "lint", "tests")


def test_an_empty_file_is_the_default_config() -> None:
    assert load_repo_config("") == RepoConfig.default()
    assert load_repo_config("# only a comment\n") == RepoConfig.default()


def test_default_config_has_no_user_gates_and_the_script_profile() -> None:
    config = RepoConfig.default()

    assert dict(config.gates) == {}
    assert dict(config.quality_rails) == {"agent-task": ()}
    assert config.mandatory_gates("agent-task") == ("claims",)
    assert config.default_profile == "script"
    script = config.profiles["script"]
    assert script.adapter is AgentAdapter.SCRIPT
    assert script.capabilities == AGENT_CAPS | {"git:merge"}
    assert script.command == ()
    assert script.timeout == timedelta(minutes=30)
    assert script.output_format is OutputFormat.TEXT
    assert config.merge == MergePolicy("main", MergeStrategy.MERGE)
    assert (config.max_gate_attempts, config.gate_parallelism) == (3, 4)


def test_every_key_is_read() -> None:
    config = load_repo_config(
        "max_gate_attempts = 10\ngate_parallelism = 1\ndefault_profile = 'b'\n"
        "[gates.t]\ncommand = 'x'\ntimeout = 5\ncoverage_min = 72.5\n"
        "coverage_report = './reports/coverage.json'\nenv = { PYTHONHASHSEED = '0', _X1 = '' }\n"
        "[quality_rails]\nshell = ['t']\n"
        "[profiles.a]\nadapter = 'script'\n[profiles.b]\ncommand = ['b', '{prompt_file}']\n"
        "capabilities = ['git:*']\ntimeout = 90\noutput_format = 'text'\n"
        "[merge]\ntarget_branch = 'release/1.2'\nstrategy = 'rebase'\n"
    )

    gate = config.gates["t"]
    assert gate.timeout == timedelta(seconds=5)
    assert gate.coverage_min == 72.5
    assert gate.coverage_report == "reports/coverage.json"  # normalised
    assert dict(gate.env) == {"PYTHONHASHSEED": "0", "_X1": ""}
    assert dict(config.quality_rails) == {"agent-task": (), "shell": ("t",)}
    assert config.default_profile == "b"
    assert set(config.profiles) == {"a", "b"}  # [profiles] replaces the built-in script profile
    assert config.profiles["b"].command == ("b", "{prompt_file}")
    assert config.profiles["b"].capabilities == frozenset({"git:*"})
    assert config.profiles["b"].timeout == timedelta(seconds=90)
    assert config.merge == MergePolicy("release/1.2", MergeStrategy.REBASE)
    assert config.merge.integrates
    assert (config.max_gate_attempts, config.gate_parallelism) == (10, 1)


def test_a_single_profile_is_the_default_profile() -> None:
    assert load_repo_config(PROFILE).default_profile == "p"


def test_default_profile_may_name_the_built_in_script_profile() -> None:
    assert load_repo_config('default_profile = "script"') == RepoConfig.default()


@pytest.mark.parametrize(
    ("strategy", "integrates"),
    [("merge", True), ("rebase", True), ("branch-only", False)],
)
def test_merge_strategies(strategy: str, integrates: bool) -> None:
    merge = load_repo_config(f'[merge]\nstrategy = "{strategy}"').merge
    assert merge.strategy == MergeStrategy(strategy)
    assert merge.integrates is integrates


@pytest.mark.parametrize("branch", ["main", "release/1.2", "feature/x-y_z", "v2"])
def test_branch_names_git_accepts_are_accepted(branch: str) -> None:
    assert load_repo_config(f'[merge]\ntarget_branch = "{branch}"').merge.target_branch == branch


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("90s", 90), ("2m", 120), ("1h", 3600), ("1h30m", 5400), ("1h30m15s", 5415)],
        *[("45m30s", 2730), ("24h", 86_400), ("0h1s", 1), ("120", 120), ("86400", 86_400)],
    ],
)
def test_durations(text: str, seconds: int) -> None:
    value = text if not text.isdigit() else int(text)
    config = load_repo_config(f"{GATE}timeout = {json.dumps(value)}")
    assert config.gates["t"].timeout == timedelta(seconds=seconds)


@given(st.integers(0, 24), st.integers(0, 300), st.integers(0, 5000), st.sampled_from("hms"))
def test_any_written_duration_up_to_24h_parses_to_its_seconds(
    hours: int, minutes: int, seconds: int, drop: str
) -> None:
    parts = {"h": hours, "m": minutes, "s": seconds}
    parts[drop] = 0
    text = "".join(f"{value}{unit}" for unit, value in parts.items() if value)
    total = hours * 3600 * (drop != "h") + minutes * 60 * (drop != "m") + seconds * (drop != "s")
    if not 0 < total <= 86_400:
        with pytest.raises(InvalidRepoConfig):
            load_repo_config(f'{GATE}timeout = "{text}"')
        return
    assert load_repo_config(f'{GATE}timeout = "{text}"').gates["t"].timeout.total_seconds() == (
        total
    )


# --- the claims gate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rails",
    ["", "[quality_rails]\n", "[quality_rails]\nagent-task = []\n", "[quality_rails]\nshell = []"],
)
def test_claims_gate_is_mandatory_for_agent_task_whatever_the_rails_say(rails: str) -> None:
    config = load_repo_config(rails)
    assert config.mandatory_gates("agent-task") == ("claims",)
    assert config.quality_rails["agent-task"] == ()


def test_claims_gate_cannot_be_removed_from_a_config_built_in_code() -> None:
    config = RepoConfig(quality_rails={"shell": ()})
    assert config.mandatory_gates("agent-task") == ("claims",)
    with pytest.raises(TypeError):
        config.quality_rails["agent-task"] = ()  # type: ignore[index]


def test_listing_claims_explicitly_keeps_it_once_and_first() -> None:
    config = load_repo_config(f"{GATE}[quality_rails]\nagent-task = ['t', 'claims']\n")
    assert config.mandatory_gates("agent-task") == ("claims", "t")


def test_claims_gate_can_be_required_for_another_job_type() -> None:
    config = load_repo_config("[quality_rails]\nshell = ['claims']\n")
    assert config.mandatory_gates("shell") == ("claims",)
    assert config.mandatory_gates("noop") == ()


def test_every_agent_job_type_has_the_claims_gate() -> None:
    config = RepoConfig.default()
    assert config.mandatory_gates("agent-task") == ("claims",)
    assert config.mandatory_gates("agent-review") == ("claims",)


@pytest.mark.parametrize("name", ["claims", "Claims", "CLAIMS"])
def test_a_user_gate_may_not_be_named_claims(name: str) -> None:
    _rejects(f'[gates.{name}]\ncommand = "true"', f"gates.{name}", "built-in claims gate")
    with pytest.raises(InvalidRepoConfig) as info:
        GateConfig(name, "true")
    assert (info.value.source, info.value.key) == (IN_CODE, f"gates.{name}")


def test_claims_gate_name_is_the_constant() -> None:
    assert CLAIMS_GATE == "claims"


# --- rejected input ------------------------------------------------------------------------


def test_toml_syntax_error_reports_line_and_column() -> None:
    error = _rejects('[gates.lint]\ncommand = "x"\n[gates.lint]\n', None, "line 3, column 12")
    assert (error.line, error.column) == (3, 12)
    assert "TOML syntax error" in error.message
    assert "Cannot declare" in error.message
    assert error.fields["line"] == 3


def test_toml_syntax_error_at_end_of_document_points_at_the_end() -> None:
    error = _rejects("a = 1\nb = [1,\n", None, "line 3, column 1", "Invalid value")
    assert (error.line, error.column) == (3, 1)
    assert "end of document" not in error.message


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("max_gate_attempt = 3", "max_gate_attempt", "did you mean 'max_gate_attempts'?"),
        ("[gate.lint]\ncommand = 'x'", "gate", "did you mean 'gates'?"),
        ("zzz = 1", "zzz", "allowed: max_gate_attempts, gate_parallelism"),
        ("[gates.t]\ncomand = 'x'", "gates.t.comand", "did you mean 'command'?"),
        (f"{GATE}timout = 5", "gates.t.timout", "did you mean 'timeout'?"),
        (f"{PROFILE}capability = []", "profiles.p.capability", "did you mean 'capabilities'?"),
        (f"{PROFILE}name = 'p'", "profiles.p.name", "allowed: adapter, command"),
        ("[merge]\nbranch = 'main'", "merge.branch", "allowed: target_branch, strategy"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(text: str, key: str, hint: str) -> None:
    _rejects(text, key, "unknown key", hint)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"2 m"', ["invalid duration '2 m'"]),
        ('""', ["invalid duration ''"]),
        ('"90"', ["invalid duration '90'"]),
        ('"1.5h"', ["invalid duration"]),
        ('"1d"', ["invalid duration"]),
        ('"30m1h"', ["invalid duration"]),
        ('"-5s"', ["invalid duration"]),
        ('"5S"', ["invalid duration"]),
        ("1.5", ["invalid duration 1.5"]),
        ("true", ["invalid duration True"]),
        ("00:02:00", ["invalid duration"]),
        ("[60]", ["invalid duration"]),
        ("0", ["must be positive, got 0"]),
        ('"0s"', ["must be positive"]),
        ('"0h0m"', ["must be positive"]),
        ("-3", ["must be positive, got -3"]),
        ("86401", ["longer than the 24h limit"]),
        ('"25h"', ["longer than the 24h limit"]),
        ("9223372036854775807", ["longer than the 24h limit"]),
    ],
)
def test_bad_durations_are_rejected_with_the_right_form(value: str, words: list[str]) -> None:
    form = 'write integer seconds (120) or a string such as "90s", "2m", "1h" or "1h30m"'
    _rejects(f"{GATE}timeout = {value}", "gates.t.timeout", *words, form)
    _rejects(f"{PROFILE}timeout = {value}", "profiles.p.timeout", *words, form)


@pytest.mark.parametrize(
    ("gate", "key", "words"),
    [
        ("timeout = 5", "gates.t.command", ["is missing", 'command = "pytest -q"']),
        ("command = ''", "gates.t.command", ["is empty", 'command = ["pytest", "-q"]']),
        ("command = '   '", "gates.t.command", ["is empty"]),
        ("command = []", "gates.t.command", ["is empty"]),
        ("command = ['', '-q']", "gates.t.command", ["starts with an empty program"]),
        ("command = ['pytest', 3]", "gates.t.command", ["must be an array of strings"]),
        ("command = 3", "gates.t.command", ["must be a string or an array", "an integer"]),
        ("command = 'x'\ncoverage_min = 80", "gates.t.coverage_report", ["is missing"]),
        ("command = 'x'\ncoverage_report = 'c.xml'", "gates.t.coverage_min", ["is missing"]),
    ],
)
def test_bad_gates_are_rejected(gate: str, key: str, words: list[str]) -> None:
    _rejects(f"[gates.t]\n{gate}", key, *words)


@pytest.mark.parametrize("value", ["101", "-1", "100.5", "nan", "inf", "'80'", "true"])
def test_coverage_min_must_be_a_percentage(value: str) -> None:
    _rejects(
        f"{GATE}coverage_min = {value}\ncoverage_report = 'c.xml'",
        "gates.t.coverage_min",
        "must be a percentage 0-100",
    )


@pytest.mark.parametrize("value", ["0", "100", "0.5"])
def test_coverage_min_bounds_are_inclusive(value: str) -> None:
    config = load_repo_config(f"{GATE}coverage_min = {value}\ncoverage_report = 'c.xml'")
    assert config.gates["t"].coverage_min == float(value)


@pytest.mark.parametrize(
    ("report", "words"),
    [
        ("/tmp/coverage.xml", ["must be a path inside the worktree"]),
        ("../coverage.xml", ["must be a path inside the worktree"]),
        ("a/../../coverage.xml", ["must be a path inside the worktree"]),
        ("reports\\\\coverage.xml", ["must be a path inside the worktree"]),
        ("coverage.txt", ["use a Cobertura .xml or a coverage.py .json report"]),
        ("coverage", ["use a Cobertura .xml"]),
    ],
)
def test_coverage_report_must_be_an_xml_or_json_path_in_the_worktree(
    report: str, words: list[str]
) -> None:
    text = f'{GATE}coverage_min = 50\ncoverage_report = "{report}"'
    _rejects(text, "gates.t.coverage_report", *words)


def test_coverage_report_must_be_a_string() -> None:
    _rejects(f"{GATE}coverage_min = 50\ncoverage_report = 1", "gates.t.coverage_report", "string")


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ("env = { 1X = 'a' }", "gates.t.env", ["'1X' is not an environment variable name"]),
        ("env = { 'A-B' = 'a' }", "gates.t.env", ["'A-B' is not an environment"]),
        ("env = { SEED = 0 }", "gates.t.env.SEED", ['must be a string, e.g. SEED = "0"']),
        ("env = 'A=b'", "gates.t.env", ["must be a table", "a string"]),
    ],
)
def test_bad_gate_env_is_rejected(env: str, key: str, words: list[str]) -> None:
    _rejects(f"{GATE}{env}", key, *words)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("gates = 3", "gates", ["must be a table ([gates]", "an integer"]),
        ("[gates]\nlint = 'ruff'", "gates.lint", ["must be a table", "a string"]),
        ('[gates."two words"]\ncommand = "x"', "gates.two words", ["is not a valid name"]),
        ('[gates.""]\ncommand = "x"', "gates.", ["'' is not a valid name"]),
        (f'[gates.{"x" * 65}]\ncommand = "x"', f"gates.{'x' * 65}", ["is not a valid name"]),
        ("quality_rails = []", "quality_rails", ["must be a table"]),
        ("profiles = 'claude'", "profiles", ["must be a table"]),
        ("merge = 'rebase'", "merge", ["must be a table"]),
    ],
)
def test_sections_must_be_tables_of_valid_names(text: str, key: str, words: list[str]) -> None:
    _rejects(text, key, *words)


@pytest.mark.parametrize(
    ("rails", "key", "words"),
    [
        ("agent-task = ['lnt']", "quality_rails.agent-task", ["unknown gate 'lnt'", "[gates.lnt]"]),
        ("agent-task = ['t', 't']", "quality_rails.agent-task", ["lists a gate twice"]),
        ("agent-task = 't'", "quality_rails.agent-task", ["must be an array of strings"]),
        ("agent-task = [1]", "quality_rails.agent-task", ["must be an array of strings"]),
        ("'bad type' = ['t']", "quality_rails.bad type", ["is not a valid name"]),
    ],
)
def test_bad_quality_rails_are_rejected(rails: str, key: str, words: list[str]) -> None:
    error = _rejects(f"{GATE}[quality_rails]\n{rails}", key, *words)
    if "unknown gate" in error.message:
        assert "use: claims, t" in error.message  # the gates one may use instead


@pytest.mark.parametrize(
    ("profile", "key", "words"),
    [
        ("adapter = 'cli'", "profiles.p.adapter", ['must be one of "command", "script"', "'cli'"]),
        ("adapter = 1", "profiles.p.adapter", ["must be one of"]),
        ("output_format = 'json'", "profiles.p.output_format", ['"text", "claude-stream-json"']),
        ("timeout = '30'", "profiles.p.timeout", ["invalid duration '30'"]),
        ("capabilities = 'repo:read'", "profiles.p.capabilities", ['such as ["repo:read"]']),
        ("capabilities = ['Repo:Read']", "profiles.p.capabilities", ["not a capability"]),
        ("capabilities = ['repo']", "profiles.p.capabilities", ["write resource:action"]),
        ("capabilities = ['repo:wirte']", "profiles.p.capabilities", ["unknown capability"]),
        ("capabilities = ['gti:*']", "profiles.p.capabilities", ["unknown resource in 'gti:*'"]),
        ("capabilities = [1]", "profiles.p.capabilities", ["a capability is a string"]),
    ],
)
def test_bad_profiles_are_rejected(profile: str, key: str, words: list[str]) -> None:
    _rejects(f"{PROFILE}{profile}", key, *words)


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("'agent {promt}'", ["unknown placeholder {promt}", "use {prompt} {prompt_file}"]),
        ("'agent {}'", ["unknown placeholder {}"]),
        ("'agent {0}'", ["unknown placeholder {0}"]),
        ("'agent {prompt.upper}'", ["unknown placeholder {prompt.upper}"]),
        ("'agent {prompt[0]}'", ["unknown placeholder {prompt[0]}"]),
        ("'agent {prompt!r}'", ["takes no conversion or format; write {prompt}"]),
        ("'agent {prompt:>9}'", ["takes no conversion or format"]),
        ("'agent {prompt'", ["write {{ and }} for literal braces"]),
        ("'agent }'", ["write {{ and }} for literal braces"]),
        ("['agent', '--dir={cwd}']", ["unknown placeholder {cwd}"]),
        ('"agent \'{prompt}"', ["cannot be split into arguments", "check the quotes"]),
        ("''", ["is empty"]),
        ("[]", ["is missing"]),
        ("['', '{prompt}']", ["starts with an empty program"]),
    ],
)
def test_bad_agent_commands_are_rejected(command: str, words: list[str]) -> None:
    _rejects(f"[profiles.p]\ncommand = {command}", "profiles.p.command", *words)


def test_command_adapter_needs_a_command() -> None:
    _rejects("[profiles.p]\nadapter = 'command'", "profiles.p.command", "is missing")


@pytest.mark.parametrize("command", ["'x'", "['x']", "''"])
def test_script_adapter_takes_no_command(command: str) -> None:
    text = f"[profiles.p]\nadapter = 'script'\ncommand = {command}"
    _rejects(text, "profiles.p.command", 'adapter "script" takes no command')


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("profiles = {}", "profiles", ["defines no profile", "remove [profiles]"]),
        (f"default_profile = 'q'\n{PROFILE}", "default_profile", ["'q' is not a profile; use: p"]),
        ("default_profile = 'claude'", "default_profile", ["'claude' is not a profile"]),
        ("default_profile = 3", "default_profile", ["3 is not a profile"]),
        (f"{PROFILE}[profiles.o]\nadapter = 'script'", "default_profile", ["is needed", "'o'"]),
    ],
)
def test_default_profile_must_name_a_defined_profile(text: str, key: str, words: list[str]) -> None:
    _rejects(text, key, *words)


@pytest.mark.parametrize(
    "branch",
    [
        *("", "-x", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\\\b"),
        *("x.lock", "a/", "a.", ".hidden", "a/.b", "a//b", "a@{b", "a\\tb"),
    ],
)
def test_target_branch_must_be_a_git_branch_name(branch: str) -> None:
    _rejects(f'[merge]\ntarget_branch = "{branch}"', "merge.target_branch", "not a branch name")


@pytest.mark.parametrize(
    ("merge", "key", "words"),
    [
        ("strategy = 'squash'", "merge.strategy", ['"merge", "rebase", "branch-only"', "squash"]),
        ("target_branch = 1", "merge.target_branch", ["not a branch name"]),
        ("rerun_gates_after_rebase = false", "merge.rerun_gates_after_rebase", ["unknown key"]),
    ],
)
def test_bad_merge_policies_are_rejected(merge: str, key: str, words: list[str]) -> None:
    _rejects(f"[merge]\n{merge}", key, *words)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("max_gate_attempts = 0", "max_gate_attempts", ["integer from 1 to 10, got 0"]),
        ("max_gate_attempts = 11", "max_gate_attempts", ["integer from 1 to 10, got 11"]),
        ("max_gate_attempts = true", "max_gate_attempts", ["got True"]),
        ("max_gate_attempts = '3'", "max_gate_attempts", ["got '3'"]),
        ("max_gate_attempts = 2.0", "max_gate_attempts", ["got 2.0"]),
        ("gate_parallelism = 0", "gate_parallelism", ["integer from 1 to 64, got 0"]),
        ("gate_parallelism = 65", "gate_parallelism", ["integer from 1 to 64, got 65"]),
    ],
)
def test_bad_limits_are_rejected(text: str, key: str, words: list[str]) -> None:
    _rejects(text, key, *words)


def test_an_oversized_file_is_rejected_before_parsing() -> None:
    _rejects("#" * (MAX_CONFIG_CHARS + 1), None, f"longer than {MAX_CONFIG_CHARS} characters")


def test_error_is_an_invalid_request_with_structured_fields() -> None:
    with pytest.raises(InvalidRepoConfig) as info:
        load_repo_config('[gates.lint]\ncommand = "x"\ntimeout = "soon"', source="repo/sw.toml")
    error = info.value
    assert isinstance(error, InvalidRequest)
    assert error.title == "Invalid repository configuration"
    assert error.problem.startswith("invalid duration 'soon'")
    assert error.message == f"repo/sw.toml: gates.lint.timeout: {error.problem}"
    assert error.fields == {
        "field": "gates.lint.timeout",
        "source": "repo/sw.toml",
        "key": "gates.lint.timeout",
        "line": None,
        "column": None,
    }


# --- built in code -------------------------------------------------------------------------


def test_dataclasses_normalise_what_the_loader_would() -> None:
    gate = GateConfig("t", ["pytest", "-q"], "2m", 80, "./c.xml", {"A": "1"})  # type: ignore[arg-type]
    expected = GateConfig("t", ("pytest", "-q"), timedelta(minutes=2), 80.0, "c.xml", {"A": "1"})
    assert gate == expected
    profile = AgentProfile("p", "command", ["a"], ["repo:read"], 60, "text")  # type: ignore[arg-type]
    assert profile.adapter is AgentAdapter.COMMAND
    assert profile.capabilities == frozenset({"repo:read"})
    assert profile.timeout == timedelta(minutes=1)
    assert MergePolicy(strategy="rebase").strategy is MergeStrategy.REBASE  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: GateConfig("t", "x", timeout=timedelta(0)), "gates.t.timeout"),
        (lambda: GateConfig("t", "x", timeout=timedelta(days=2)), "gates.t.timeout"),
        (lambda: AgentProfile("p", command=()), "profiles.p.command"),
        (lambda: RepoConfig(gates={"a": GateConfig("b", "x")}), "gates.a"),
        (lambda: RepoConfig(profiles={"a": AgentProfile("b", AgentAdapter.SCRIPT)}), "profiles.a"),
        (lambda: RepoConfig(quality_rails={"agent-task": ("nope",)}), "quality_rails.agent-task"),
        (lambda: RepoConfig(max_gate_attempts=0), "max_gate_attempts"),
        (lambda: MergePolicy(target_branch="a b"), "merge.target_branch"),
    ],
)
def test_dataclasses_built_in_code_obey_the_same_rules(build: object, key: str) -> None:
    with pytest.raises(InvalidRepoConfig) as info:
        build()  # type: ignore[operator]
    assert (info.value.source, info.value.key) == (IN_CODE, key)


def test_config_is_immutable() -> None:
    config = load_repo_config(f"{GATE}env = {{ A = 'b' }}")
    with pytest.raises(TypeError):
        config.gates["u"] = config.gates["t"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.gates["t"].env["A"] = "c"  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.max_gate_attempts = 5  # type: ignore[misc]


# --- agent command templates ---------------------------------------------------------------


def test_render_argv_substitutes_placeholders_after_splitting() -> None:
    profile = load_repo_config(EXAMPLE).profiles["claude"]
    prompt = "fix it; rm -rf / && echo '$HOME' \"{worktree}\""
    assert profile.render_argv({"prompt": prompt}) == (
        "claude",
        "-p",
        prompt,
        "--output-format",
        "stream-json",
        "--verbose",
    )


def test_render_argv_with_a_list_command_and_literal_braces() -> None:
    profile = AgentProfile(
        "p", command=("run", "--in={worktree}/{issue_ref}", "{{raw}}", "{prompt_file}")
    )
    values = {"worktree": "/w", "issue_ref": "gh#5", "prompt_file": "/tmp/p.md", "prompt": "x"}
    assert profile.render_argv(values) == ("run", "--in=/w/gh#5", "{raw}", "/tmp/p.md")


def test_render_argv_needs_a_value_for_every_placeholder_used() -> None:
    profile = AgentProfile("p", command="agent {prompt} {worktree}")
    with pytest.raises(ValueError, match=r"no value for placeholder \{worktree\}"):
        profile.render_argv({"prompt": "x"})


def test_render_argv_of_a_script_profile_is_empty() -> None:
    assert RepoConfig.default().profiles["script"].render_argv({}) == ()


@given(st.text(max_size=40))
def test_a_prompt_is_always_exactly_one_argument(prompt: str) -> None:
    profile = AgentProfile("p", command="agent --print {prompt} --json")
    assert profile.render_argv({"prompt": prompt}) == ("agent", "--print", prompt, "--json")


@given(st.text(alphabet=string.ascii_letters + "{}!:.[]0 ", max_size=12))
def test_templates_are_accepted_exactly_when_they_use_only_known_placeholders(
    text: str,
) -> None:
    values = {"prompt": "P", "prompt_file": "F", "worktree": "W", "issue_ref": "I"}
    try:
        expected: tuple[str, ...] | None = tuple(p.format(**values) for p in [text])
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        expected = None
    try:
        profile = AgentProfile("p", command=("agent", text))
    except InvalidRepoConfig:
        # Refused: what str.format cannot render, and conversions, specs, attributes, indexes.
        assert expected is None or any(c in text for c in "!:.[")
        return
    assert expected is not None
    assert profile.render_argv(values) == ("agent", *expected)


# --- reading the file ----------------------------------------------------------------------


def test_read_repo_config_without_a_file_is_the_default(tmp_path: Path) -> None:
    assert read_repo_config(tmp_path) == RepoConfig.default()


def test_read_repo_config_reads_the_file_and_names_it_in_errors(tmp_path: Path) -> None:
    (tmp_path / "stitchwork.toml").write_text(EXAMPLE, encoding="utf-8")
    assert read_repo_config(tmp_path) == load_repo_config(EXAMPLE)

    (tmp_path / "stitchwork.toml").write_text("max_gate_attempts = 0\n", encoding="utf-8")
    with pytest.raises(InvalidRepoConfig) as info:
        read_repo_config(tmp_path)
    assert info.value.source == str(tmp_path / "stitchwork.toml")
    assert info.value.key == "max_gate_attempts"


def test_read_repo_config_tolerates_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "stitchwork.toml").write_bytes(b"\xef\xbb\xbfmax_gate_attempts = 2\n")
    assert read_repo_config(tmp_path).max_gate_attempts == 2


def test_read_repo_config_rejects_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "stitchwork.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(InvalidRepoConfig, match=r"is not UTF-8 \(bad byte at offset 5\)"):
        read_repo_config(tmp_path)


def test_read_repo_config_rejects_a_directory(tmp_path: Path) -> None:
    (tmp_path / "stitchwork.toml").mkdir()
    with pytest.raises(InvalidRepoConfig, match="cannot be read"):
        read_repo_config(tmp_path)


def test_read_repo_config_refuses_a_symlink_out_of_the_repository(tmp_path: Path) -> None:
    repo, outside = tmp_path / "repo", tmp_path / "outside.toml"
    repo.mkdir()
    outside.write_text("max_gate_attempts = 2\n", encoding="utf-8")
    os.symlink(outside, repo / "stitchwork.toml")
    with pytest.raises(InvalidRepoConfig, match="symlink that leads out of the repository"):
        read_repo_config(repo)


def test_read_repo_config_follows_a_symlink_inside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sw.toml").write_text("max_gate_attempts = 2\n", encoding="utf-8")
    os.symlink(tmp_path / "config" / "sw.toml", tmp_path / "stitchwork.toml")
    assert read_repo_config(tmp_path).max_gate_attempts == 2


def test_read_repo_config_reports_a_dangling_symlink(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing.toml", tmp_path / "stitchwork.toml")
    with pytest.raises(InvalidRepoConfig, match="cannot be read"):
        read_repo_config(tmp_path)


# --- coverage reports ----------------------------------------------------------------------

COBERTURA = """<?xml version="1.0" ?>
<!DOCTYPE coverage SYSTEM "https://raw.githubusercontent.com/cobertura/web/master/htdocs/xml/coverage-04.dtd">
<coverage version="7.6.1" timestamp="1" lines-valid="200" lines-covered="163" line-rate="{rate}"
 branches-covered="0" branches-valid="0" branch-rate="0" complexity="0">
 <sources><source>/w</source></sources>
 <packages/>
</coverage>
"""


@pytest.mark.parametrize(("rate", "percent"), [("0.815", 81.5), ("1", 100.0), ("0", 0.0)])
def test_cobertura_line_rate_is_read_as_percent(rate: str, percent: float) -> None:
    text = COBERTURA.format(rate=rate)
    assert parse_coverage(text, filename="coverage.xml") == pytest.approx(percent)
    assert parse_coverage(text, filename="out/COVERAGE.XML") == pytest.approx(percent)


def test_coverage_py_json_total_is_read() -> None:
    report = {"meta": {"version": "7.6.1"}, "files": {}, "totals": {"percent_covered": 92.31}}
    assert parse_coverage(json.dumps(report), filename="coverage.json") == 92.31
    report["totals"] = {"percent_covered": 100}
    assert parse_coverage(json.dumps(report), filename="coverage.json") == 100.0


@pytest.mark.parametrize(
    ("text", "filename", "words"),
    [
        ("<coverage line-rate='0.5'>", "coverage.xml", ["not a Cobertura report"]),
        ("not xml", "coverage.xml", ["not a Cobertura report"]),
        ("", "coverage.xml", ["not a Cobertura report"]),
        ("<report line-rate='0.5'/>", "coverage.xml", ["the root element is not <coverage>"]),
        ("<coverage/>", "coverage.xml", ["not a Cobertura report"]),
        ("<coverage line-rate='high'/>", "coverage.xml", ["not a Cobertura report", "high"]),
        ("<coverage line-rate='1.2'/>", "coverage.xml", ["total coverage 120.0% is not 0-100"]),
        ("<coverage line-rate='NaN'/>", "coverage.xml", ["is not 0-100"]),
        (
            '<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaa">]><coverage line-rate="&a;"/>',
            "coverage.xml",
            ["entity declarations are refused"],
        ),
        ("{", "coverage.json", ["not a coverage.py JSON report"]),
        ("[]", "coverage.json", ["not a coverage.py JSON report"]),
        ('{"totals": {}}', "coverage.json", ["totals.percent_covered"]),
        ('{"totals": {"percent_covered": "91"}}', "coverage.json", ["is not a number"]),
        ('{"totals": {"percent_covered": true}}', "coverage.json", ["is not a number"]),
        ('{"totals": {"percent_covered": -1}}', "coverage.json", ["is not 0-100"]),
        ('{"totals": {"percent_covered": NaN}}', "coverage.json", ["is not 0-100"]),
        ("<coverage line-rate='0.5'/>", "coverage.txt", ["unknown format", "Cobertura XML"]),
        ("<coverage line-rate='0.5'/>", "coverage", ["unknown format"]),
    ],
)
def test_unreadable_coverage_reports_are_refused_clearly(
    text: str, filename: str, words: list[str]
) -> None:
    with pytest.raises(UnreadableCoverageReport) as info:
        parse_coverage(text, filename=filename)
    assert str(info.value).startswith(f"{filename}: ")
    for word in words:
        assert word in str(info.value)
