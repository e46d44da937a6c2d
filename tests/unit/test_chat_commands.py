"""The chat command grammar: a table of valid and invalid messages, and properties that hold
for any input (only ``CommandSyntaxError`` is ever raised, always with a message and an
example)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stitchwork.domain.chat_commands import (
    Action,
    Command,
    IssueRef,
    JobRef,
    help_text,
    parse_body,
    parse_command,
)
from stitchwork.errors import CommandSyntaxError, InvalidRequest

BOT_IDS = frozenset({"123", "U0BOT"})
JOB_ID = UUID("3f2a9c1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b")


@dataclass(frozen=True)
class Err:
    """An expected ``CommandSyntaxError``: its message contains every one of ``fragments``
    and its example is ``example``."""

    fragments: tuple[str, ...]
    example: str


def err(*fragments: str, example: str) -> Err:
    return Err(fragments, example)


def fix(number: int, repo: str | None = None, host: str | None = None, agent: str | None = None):
    return Command(Action.FIX, issue=IssueRef(number, repo, host), agent=agent)


def job(action: Action, **ref: object) -> Command:
    return Command(action, job=JobRef(**ref))  # type: ignore[arg-type]


def on_issue(action: Action, number: int, repo: str | None = None) -> Command:
    return Command(action, job=JobRef(issue=IssueRef(number, repo)))


CASES: list[tuple[str, Command | Err | None]] = [
    # -- addressing the bot ----------------------------------------------------------------------
    ("fix #42", None),
    ("hello @stitch fix #42", None),
    ("@stitchy fix #42", None),
    ("@stitch-bot fix #42", None),
    ("@stitch.io fix #42", None),
    ("<@999> fix #42", None),
    ("", None),
    ("@stitch fix #42", fix(42)),
    ("@STITCH fix #42", fix(42)),
    ("@Stitch FIX #42", fix(42)),
    ("   @stitch \t  fix\n  #42   ", fix(42)),
    ("@stitch: fix #42", fix(42)),
    ("@stitch, fix #42", fix(42)),
    ("<@123> fix #42", fix(42)),
    ("<@!123> fix #42", fix(42)),
    ("<@U0BOT|stitch> fix #42", fix(42)),
    ("<@123>: fix #42", fix(42)),
    ("<@123> @stitch fix #42", fix(42)),
    ("@stitch\u00a0fix\u00a0#42", fix(42)),
    # -- fix -------------------------------------------------------------------------------------
    ("@stitch fix #007", fix(7)),
    ("@stitch fix Acme/App#42", fix(42, "acme/app")),
    ("@stitch fix acme/app#0042", fix(42, "acme/app")),
    ("@stitch fix https://github.com/Acme/App/issues/42", fix(42, "acme/app", "github.com")),
    ("@stitch fix https://www.github.com/acme/app/issues/42/", fix(42, "acme/app", "github.com")),
    (
        "@stitch fix https://github.com/acme/app/issues/42#issuecomment-7",
        fix(42, "acme/app", "github.com"),
    ),
    (
        "@stitch fix https://gitea.example.org/acme/app/issues/42",
        fix(42, "acme/app", "gitea.example.org"),
    ),
    (
        "@stitch fix http://Gitea.Example:3000/acme/app/issues/0009",
        fix(9, "acme/app", "gitea.example:3000"),
    ),
    (
        "@stitch fix https://gitlab.com/group/sub/repo/-/issues/42",
        fix(42, "group/sub/repo", "gitlab.com"),
    ),
    (
        "@stitch fix <https://github.com/acme/app/issues/5|acme/app#5>",
        fix(5, "acme/app", "github.com"),
    ),
    ("@stitch fix #42 agent=claude", fix(42, agent="claude")),
    ("@stitch fix #42 AGENT=Claude-3.5_x", fix(42, agent="Claude-3.5_x")),
    ("@stitch fix agent=claude #42", fix(42, agent="claude")),
    ("@stitch fix #42 agent = claude", fix(42, agent="claude")),
    ("@stitch fix", err("fix needs an issue", example="@stitch fix #42")),
    ("@stitch fix 42", err("'42' is not an issue", "did you mean #42?", example="@stitch fix #42")),
    ("@stitch fix #0", err("issue numbers start at 1", example="@stitch fix #42")),
    ("@stitch fix #000", err("issue numbers start at 1", example="@stitch fix #42")),
    ("@stitch fix #", err("'#' is not an issue", example="@stitch fix #42")),
    ("@stitch fix #4x", err("'#4x' is not an issue", example="@stitch fix #42")),
    ("@stitch fix #99999999999", err("too large", example="@stitch fix #42")),
    ("@stitch fix acme#42", err("'acme#42' is not an issue", example="@stitch fix #42")),
    ("@stitch fix ../app#42", err("does not name a repository", example="@stitch fix #42")),
    ("@stitch fix #42 #43", err("too many arguments", "'#43'", example="@stitch fix #42")),
    (
        "@stitch fix https://github.com/acme/app/pull/42",
        err("pull or merge request", example="@stitch fix #42"),
    ),
    (
        "@stitch fix https://gitlab.com/g/r/-/merge_requests/3",
        err("pull or merge request", example="@stitch fix #42"),
    ),
    (
        "@stitch fix https://github.com/acme/app",
        err("ends in /issues/<number>", example="@stitch fix #42"),
    ),
    (
        "@stitch fix #42 agent=",
        err("is not a profile name", example="@stitch fix #42 agent=claude"),
    ),
    (
        "@stitch fix #42 agent=a/b",
        err("'a/b' is not a profile name", example="@stitch fix #42 agent=claude"),
    ),
    (
        "@stitch fix #42 agent=a agent=b",
        err("agent= is given twice", example="@stitch fix #42 agent=claude"),
    ),
    (
        "@stitch fix #42 model=opus",
        err("unknown option 'model=opus'", "agent=<profile>", example="@stitch fix #42"),
    ),
    # -- job references --------------------------------------------------------------------------
    ("@stitch status 3f2a9c", job(Action.STATUS, prefix="3f2a9c")),
    ("@stitch status 3F2A9C1E", job(Action.STATUS, prefix="3f2a9c1e")),
    ("@stitch status 3f2a9c1e5b6d", job(Action.STATUS, prefix="3f2a9c1e-5b6d")),
    ("@stitch status 3f2a9c1e-5b", job(Action.STATUS, prefix="3f2a9c1e-5b")),
    ("@stitch status 3f2a9c1e-", job(Action.STATUS, prefix="3f2a9c1e")),
    ("@stitch status " + str(JOB_ID), job(Action.STATUS, job_id=JOB_ID)),
    ("@stitch cancel " + str(JOB_ID).upper(), job(Action.CANCEL, job_id=JOB_ID)),
    ("@stitch retry " + JOB_ID.hex, job(Action.RETRY, job_id=JOB_ID)),
    ("@stitch verbose #42", on_issue(Action.VERBOSE, 42)),
    ("@stitch retry acme/app#042", on_issue(Action.RETRY, 42, "acme/app")),
    (
        "@stitch cancel https://github.com/acme/app/issues/42",
        Command(Action.CANCEL, job=JobRef(issue=IssueRef(42, "acme/app", "github.com"))),
    ),
    ("@stitch status", err("status needs a job", example="@stitch status 3f2a9c1e")),
    ("@stitch cancel", err("cancel needs a job", example="@stitch cancel 3f2a9c1e")),
    ("@stitch retry", err("retry needs a job", example="@stitch retry #42")),
    ("@stitch verbose", err("verbose needs a job", example="@stitch verbose 3f2a9c1e")),
    (
        "@stitch status 3f2a9",
        err("too short", "at least 6 characters", example="@stitch status 3f2a9c1e"),
    ),
    ("@stitch status 42", err("too short", "say #42", example="@stitch status 3f2a9c1e")),
    ("@stitch status last", err("'last' is not a job", example="@stitch status 3f2a9c1e")),
    ("@stitch status 3f-2a9c1e", err("dashes are out of place", example="@stitch status 3f2a9c1e")),
    (
        "@stitch status " + JOB_ID.hex + "0",
        err("longer than a job id", example="@stitch status 3f2a9c1e"),
    ),
    (
        "@stitch status 3f2a9c 4b5d6e",
        err("too many arguments", "'4b5d6e'", example="@stitch status 3f2a9c1e"),
    ),
    (
        "@stitch cancel 3f2a9c agent=x",
        err("unknown option", "cancel takes no options", example="@stitch cancel 3f2a9c1e"),
    ),
    ("@stitch retry #0", err("issue numbers start at 1", example="@stitch retry #42")),
    # -- quiet, jobs, help -----------------------------------------------------------------------
    ("@stitch quiet", Command(Action.QUIET)),
    ("@stitch QUIET 3f2a9c", job(Action.QUIET, prefix="3f2a9c")),
    ("@stitch quiet #42", on_issue(Action.QUIET, 42)),
    ("@stitch quiet a b", err("too many arguments", example="@stitch quiet 3f2a9c1e")),
    ("@stitch jobs", Command(Action.JOBS)),
    ("@stitch Jobs   ", Command(Action.JOBS)),
    ("@stitch jobs all", err("jobs takes no arguments", "'all'", example="@stitch jobs")),
    ("@stitch help", Command(Action.HELP)),
    ("@stitch help fix", Command(Action.HELP, topic=Action.FIX)),
    ("@stitch help QUIET", Command(Action.HELP, topic=Action.QUIET)),
    (
        "@stitch help fxi",
        err("no action 'fxi' to explain", "did you mean fix?", example="@stitch help fix"),
    ),
    ("@stitch help fix status", err("too many arguments", example="@stitch help fix")),
    # -- no action, unknown actions --------------------------------------------------------------
    ("@stitch", err("say what to do", "fix, status", example="@stitch fix #42")),
    ("<@123>   ", err("say what to do", example="@stitch fix #42")),
    (
        "@stitch fox #42",
        err("unknown action 'fox'", "did you mean fix?", example="@stitch fix #42"),
    ),
    ("@stitch stauts 3f2a9c", err("did you mean status?", example="@stitch status 3f2a9c1e")),
    ("@stitch cancle #1", err("did you mean cancel?", example="@stitch cancel 3f2a9c1e")),
    ("@stitch job", err("did you mean jobs?", example="@stitch jobs")),
    (
        "@stitch deploy prod",
        err("unknown action 'deploy'", "the actions are fix, status", example="@stitch help"),
    ),
    ("@stitch " + "x" * 2001, err("commands are short", example="@stitch help")),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[repr(t)[:60] for t, _ in CASES])
def test_parse_command(text: str, expected: Command | Err | None) -> None:
    if isinstance(expected, Err):
        with pytest.raises(CommandSyntaxError) as caught:
            parse_command(text, bot_ids=BOT_IDS)
        for fragment in expected.fragments:
            assert fragment in caught.value.message
        assert caught.value.example == expected.example
        assert str(caught.value).endswith(f"For example: {expected.example}")
    else:
        assert parse_command(text, bot_ids=BOT_IDS) == expected


def test_the_table_is_large_and_mixed() -> None:
    errors = sum(isinstance(e, Err) for _, e in CASES)
    assert len(CASES) >= 60
    assert errors >= 25
    assert len(CASES) - errors >= 25


def test_a_configured_bot_name_is_addressed_and_used_in_examples() -> None:
    assert parse_command("@Kit fix #1", bot_name="kit") == fix(1)
    assert parse_command("@stitch fix #1", bot_name="kit") is None
    assert parse_command("@kit fix #1", bot_name="@kit") == fix(1)
    with pytest.raises(CommandSyntaxError) as caught:
        parse_command("@kit fix", bot_name="kit")
    assert caught.value.example == "@kit fix #42"


def test_a_mention_by_id_needs_the_bot_id() -> None:
    assert parse_command("<@123> fix #42") is None
    assert parse_command("<@123> fix #42", bot_ids=["123"]) == fix(42)


def test_parse_body_reads_the_text_after_the_mention() -> None:
    assert parse_body("fix owner/repo#3 agent=codex") == fix(3, "owner/repo", agent="codex")
    assert parse_body("  status 3f2a9c  ") == job(Action.STATUS, prefix="3f2a9c")
    with pytest.raises(CommandSyntaxError, match="say what to do"):
        parse_body("   ")


def test_the_syntax_error_is_an_invalid_request_with_structured_fields() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body("fix")
    error = caught.value
    assert isinstance(error, CommandSyntaxError)
    assert error.fields["example"] == "@stitch fix #42"
    assert error.field == "command"
    assert (
        str(error)
        == "fix needs an issue: fix <issue> [agent=<profile>]. For example: @stitch fix #42"
    )


def test_issue_key_is_canonical() -> None:
    assert IssueRef(42).key() == "#42"
    assert IssueRef(42).key("Acme/App") == "acme/app#42"
    assert IssueRef(42, "acme/app", "github.com").key("other/repo") == "acme/app#42"
    parsed = parse_body("fix https://GitHub.com/Acme/App/issues/0042")
    assert parsed.issue is not None
    assert parsed.issue.key() == "acme/app#42"


def test_help_lists_every_action_and_explains_one() -> None:
    everything = help_text(bot_name="kit")
    for action in Action:
        assert f"\n  {action.value}" in everything
    assert everything.startswith("Talk to me with @kit <action>")
    fix_help = help_text(Action.FIX)
    assert "@stitch fix <issue> [agent=<profile>]" in fix_help
    assert "Example: @stitch fix #42" in fix_help
    assert "/-/issues/42" in fix_help
    assert "first 6 or more characters" in help_text(Action.STATUS)


def test_every_example_in_an_error_is_itself_a_valid_command() -> None:
    for text, expected in CASES:
        if isinstance(expected, Err):
            assert isinstance(parse_command(expected.example), Command), text


# -- properties ---------------------------------------------------------------------------------

WORDS = st.sampled_from(
    [
        *(a.value for a in Action),
        "FIX", "#", "#42", "#0", "#007", "a/b#1", "../x#2", "agent=", "agent=x", "agent=a/b",
        "x=y", "=", "3f2a9c", "3f2a9", "3f2a9c1e-5b6d", "-", "--", str(JOB_ID), JOB_ID.hex,
        "https://github.com/a/b/issues/1", "https://gitlab.com/g/s/r/-/issues/2",
        "https://x/a/b/pull/3", "<https://github.com/a/b/issues/4|t>", "<@123>", "<@!123>",
        "@stitch", ":", ",", "\u00a0", "\t", "\n", "é", "٤٢", "#٤٢", "9" * 30, "#" + "9" * 5000,
    ]
)  # fmt: skip
TEXTS = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=8).map(" ".join),
)
PREFIXES = st.sampled_from(["", "@stitch ", "@STITCH:", "<@123> ", "<@!123>", "  @stitch\n"])


def _check(parse: Callable[[str], Command | None], text: str) -> None:
    error: CommandSyntaxError | None = None
    result: Command | None = None
    try:
        result = parse(text)
    except CommandSyntaxError as caught:
        error = caught
    if error is None:
        assert result is None or isinstance(result, Command)
        return
    assert error.message.strip()
    assert error.example.startswith("@stitch ")
    assert error.example in str(error)
    assert isinstance(parse_command(error.example), Command)


@settings(max_examples=400, deadline=None)
@given(prefix=PREFIXES, text=TEXTS)
def test_any_message_parses_or_raises_only_a_syntax_error_with_an_example(
    prefix: str, text: str
) -> None:
    _check(lambda t: parse_command(t, bot_ids=BOT_IDS), prefix + text)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS)
def test_any_body_parses_or_raises_only_a_syntax_error_with_an_example(text: str) -> None:
    _check(parse_body, text)


@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_a_message_not_addressed_to_the_bot_is_ignored(text: str) -> None:
    stripped = text.lstrip()
    addressed = stripped[:1] in {"@", "<"}
    if not addressed:
        assert parse_command(text, bot_ids=BOT_IDS) is None


@settings(max_examples=200, deadline=None)
@given(
    number=st.integers(min_value=1, max_value=2**31 - 1),
    zeros=st.integers(min_value=0, max_value=5),
    owner=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
    repo=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
)
def test_every_form_of_an_issue_names_the_same_issue(
    number: int, zeros: int, owner: str, repo: str
) -> None:
    digits = "0" * zeros + str(number)
    forms = [
        f"{owner}/{repo}#{digits}",
        f"https://github.com/{owner}/{repo}/issues/{digits}",
        f"https://gitlab.com/{owner}/{repo}/-/issues/{digits}",
    ]
    keys = set()
    for form in forms:
        command = parse_body(f"fix {form}")
        assert command.issue is not None
        keys.add(command.issue.key())
    assert keys == {f"{owner.lower()}/{repo.lower()}#{number}"}
