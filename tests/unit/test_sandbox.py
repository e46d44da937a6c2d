"""Confinement pieces without running anything: the clean environment, the bwrap command line,
repository roots, the redactor and the config keys that widen a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from stitchwork.config import Settings
from stitchwork.domain.repo_config import AgentProfile, GateConfig
from stitchwork.errors import Forbidden, InvalidRepoConfig
from stitchwork.runner.redaction import REDACTED, Redactor, url_secrets
from stitchwork.runner.sandbox import (
    SANDBOX_HOME,
    Confinement,
    Sandbox,
    SandboxUnavailable,
    clean_env,
    inside_roots,
)

SERVER = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/server",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "STITCHWORK_SLACK_SIGNING_SECRET": "slack-secret",
    "ANTHROPIC_API_KEY": "anthropic",
}


def test_a_clean_environment_has_the_base_what_is_declared_and_what_is_passed_only() -> None:
    env = clean_env(
        {"CI": "1", "STITCHWORK_DATA_DIR": "/x"},
        ["ANTHROPIC_API_KEY", "STITCHWORK_SLACK_SIGNING_SECRET", "NOT_SET"],
        home=SANDBOX_HOME,
        source=SERVER,
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": SANDBOX_HOME,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
        "PYTHONUNBUFFERED": "1",
        "CI": "1",
        "ANTHROPIC_API_KEY": "anthropic",
    }


def test_the_bwrap_command_hides_binds_and_cuts_the_network(tmp_path: Path) -> None:
    data, roots, worktree = tmp_path / "data", tmp_path / "src", tmp_path / "data/work/r/job"
    for path in (worktree, roots / "app/.git"):
        path.mkdir(parents=True)
    sandbox = Sandbox("auto", hidden=[data, data / "work", roots], bwrap="/usr/bin/bwrap")
    sandbox.check = lambda: None  # type: ignore[method-assign]  # the command line only
    walls = Confinement(writable=(worktree,), readonly=(roots / "app/.git",), network=False)

    argv = sandbox.wrap(["sh", "-c", "make"], walls, worktree)

    text = " ".join(argv)
    assert argv[0] == "/usr/bin/bwrap"
    assert "--ro-bind / /" in text
    assert "--unshare-pid" in argv
    assert "--die-with-parent" in argv
    assert "--unshare-net" in argv
    assert "--tmpfs /tmp" in text
    # Hidden (the work dir is inside the data dir: one mount hides both), then bound back.
    hide = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert hide == ["/tmp", str(data), str(roots)]
    assert argv.index(f"{roots}/app/.git") < argv.index(str(worktree))
    assert text.endswith(f"--chdir {worktree} -- sh -c make")
    remounted = [argv[i + 1] for i, a in enumerate(argv) if a == "--remount-ro"]
    assert remounted == [str(data), str(roots)]  # writes there fail instead of vanishing


def test_with_the_network_allowed_no_network_namespace_is_made(tmp_path: Path) -> None:
    sandbox = Sandbox("auto", bwrap="/usr/bin/bwrap")
    sandbox.check = lambda: None  # type: ignore[method-assign]
    assert "--unshare-net" not in sandbox.wrap(["true"], Confinement(), tmp_path)


def test_off_runs_commands_as_they_are_and_says_so(tmp_path: Path) -> None:
    sandbox = Sandbox("off", hidden=[tmp_path])
    assert sandbox.wrap(["true"], Confinement(network=False), tmp_path) == ["true"]
    assert sandbox.status() == "off"
    sandbox.check()  # nothing to check: opted out


def test_a_missing_bwrap_is_a_clear_refusal_that_says_how_to_install_it() -> None:
    sandbox = Sandbox("auto", bwrap="/nonexistent/bwrap")
    assert sandbox.status() == "unavailable"
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as refused:
        sandbox.check()
    assert "STITCHWORK_SANDBOX=off" in refused.value.message


def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "src", tmp_path / "elsewhere"
    (root / "app").mkdir(parents=True)
    outside.mkdir()
    assert inside_roots(str(root / "app"), [root], field="payload.repo") == root / "app"
    messages = set()
    for path in (str(outside), str(tmp_path / "missing"), str(root / ".." / "elsewhere"), "rel"):
        with pytest.raises(Forbidden) as refused:
            inside_roots(path, [root], field="payload.repo")
        messages.add(refused.value.message)
    assert len(messages) == 1  # the answer never tells whether the path exists


def test_a_symlink_inside_a_root_that_leads_out_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "src", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(Forbidden):
        inside_roots(str(root / "link"), [root], field="payload.repo")


def test_the_redactor_removes_api_keys_and_configured_secrets() -> None:
    redact = Redactor(["tok-12345678", "short", *url_secrets("postgresql://u:pg-pass-99@db/x")])
    key = "sw_0123456789ab_" + "x" * 43
    text = f"key {key} token tok-12345678 db pg-pass-99 and a short word\n"
    assert redact(text) == (
        f"key {REDACTED} token {REDACTED} db {REDACTED} and a short word\n"
    )  # values under six characters are left alone: they would redact ordinary words


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"pass_env": ["STITCHWORK_DATABASE_URL"]}, "reserved"),
        ({"env": {"STITCHWORK_X": "1"}}, "reserved"),
        ({"pass_env": ["NOT A NAME"]}, "not an environment variable name"),
        ({"network": "no"}, "true or false"),
    ],
)
def test_gates_and_profiles_cannot_ask_for_the_servers_own_settings(
    config: dict[str, object], problem: str
) -> None:
    with pytest.raises(InvalidRepoConfig, match=problem):
        GateConfig(name="tests", command="pytest", **config)  # type: ignore[arg-type]
    with pytest.raises(InvalidRepoConfig, match=problem):
        AgentProfile(name="agent", command="agent {prompt}", **config)  # type: ignore[arg-type]


def test_profile_paths_must_be_absolute() -> None:
    with pytest.raises(InvalidRepoConfig, match="absolute path"):
        AgentProfile(name="agent", command="agent {prompt}", write_paths=["cache"])
    profile = AgentProfile(name="agent", command="a {prompt}", read_paths=["/opt/models"])
    assert profile.read_paths == ("/opt/models",)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("repo_roots", [], "at least one directory"),
        ("repo_roots", ["relative/dir"], "not an absolute path"),
        ("pass_env", ["STITCHWORK_API_KEY"], "never reaches a job"),
        ("sandbox", "maybe", "auto"),
    ],
)
def test_confinement_settings_are_checked(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Settings(**{field: value})
