"""The chat command grammar: ``@<bot> <action> [args]``, parsed into a frozen ``Command``.

Pure and platform-agnostic: the providers hand over the raw text of a message and get back a
``Command``, ``None`` (the message is not for the bot) or a ``CommandSyntaxError`` whose
message says what is wrong and gives a correct example. Nothing else is ever raised, whatever
the input: the grammar is small and every token is checked with a bounded regular expression.

Grammar (case-insensitive actions and bot name; any whitespace between tokens)::

    @stitch fix <issue-ref> [agent=<profile>]
    @stitch status|cancel|retry|verbose <job-ref>
    @stitch quiet [<job-ref>]
    @stitch jobs
    @stitch help [<action>]

An issue ref is ``#42`` (the channel's repository), ``owner/repo#42`` or an issue URL of
GitHub, Gitea or GitLab (``.../group/repo/-/issues/42``). A job ref is a job id, the first 6+
characters of one, or an issue ref (that issue's latest job).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from stitchwork.errors import CommandSyntaxError

__all__ = [
    "Action",
    "Command",
    "IssueRef",
    "JobRef",
    "help_text",
    "parse_body",
    "parse_command",
    "parse_issue_ref",
    "parse_job_ref",
]

MAX_BODY_CHARS = 2000
MAX_ISSUE_NUMBER = 2**31 - 1
MIN_PREFIX_CHARS = 6


class Action(StrEnum):
    FIX = "fix"
    STATUS = "status"
    CANCEL = "cancel"
    RETRY = "retry"
    VERBOSE = "verbose"
    QUIET = "quiet"
    JOBS = "jobs"
    HELP = "help"


JOB_ACTIONS = frozenset({Action.STATUS, Action.CANCEL, Action.RETRY, Action.VERBOSE})


@dataclass(frozen=True, slots=True)
class IssueRef:
    """An issue: ``number`` >= 1, ``repo`` ("owner/repo", lower-case; None for ``#42``: the
    channel's default repository) and ``host`` for URLs ("github.com", "gitlab.com"...)."""

    number: int
    repo: str | None = None
    host: str | None = None

    def key(self, default_repo: str | None = None) -> str:
        """The canonical ``owner/repo#42`` (``#42`` when neither repo is known)."""
        repo = self.repo or (default_repo.lower() if default_repo else None)
        return f"{repo}#{self.number}" if repo else f"#{self.number}"


@dataclass(frozen=True, slots=True)
class JobRef:
    """A job: by ``job_id``, by id ``prefix`` (lower-case, canonical dashes) or by ``issue``
    (its latest job). Exactly one is set."""

    job_id: UUID | None = None
    prefix: str | None = None
    issue: IssueRef | None = None


@dataclass(frozen=True, slots=True)
class Command:
    action: Action
    issue: IssueRef | None = None  # FIX
    job: JobRef | None = None  # STATUS/CANCEL/RETRY/VERBOSE (required), QUIET (optional)
    agent: str | None = None  # FIX agent=<profile>
    topic: Action | None = None  # HELP [action]


# -- the help -----------------------------------------------------------------------------------

_USAGE: dict[Action, tuple[str, str, str]] = {  # syntax, what it does, example arguments
    Action.FIX: (
        "fix <issue> [agent=<profile>]",
        "start an agent job on an issue; its progress goes to a thread of its own",
        "#42",
    ),
    Action.STATUS: ("status <job>", "show where a job is", "3f2a9c1e"),
    Action.CANCEL: ("cancel <job>", "cancel a job that has not ended", "3f2a9c1e"),
    Action.RETRY: ("retry <job>", "run a failed or cancelled job again", "#42"),
    Action.VERBOSE: ("verbose <job>", "post a job's live output to its thread", "3f2a9c1e"),
    Action.QUIET: ("quiet [<job>]", "stop live output (for one job, or for all)", "3f2a9c1e"),
    Action.JOBS: ("jobs", "list the recent jobs", ""),
    Action.HELP: ("help [<action>]", "this help, or the help of one action", "fix"),
}

_ISSUE_FORMS = (
    "an issue is #42 (this channel's repository), owner/repo#42, or an issue URL such as "
    "https://github.com/owner/repo/issues/42 or https://gitlab.com/group/repo/-/issues/42"
)
_JOB_FORMS = (
    "a job is its id, the first 6 or more characters of its id (3f2a9c), "
    "or an issue such as #42 (its latest job)"
)


def _example(action: Action, bot_name: str, args: str | None = None) -> str:
    shown = _USAGE[action][2] if args is None else args
    return f"@{bot_name} {action.value} {shown}".rstrip()


def help_text(topic: Action | None = None, *, bot_name: str = "stitch") -> str:
    """The help for every action, or the detailed help of ``topic``."""
    bot_name = _clean_bot_name(bot_name)
    if topic is None:
        width = max(len(syntax) for syntax, _, _ in _USAGE.values())
        lines = [f"Talk to me with @{bot_name} <action>. Actions:"]
        lines += [f"  {syntax.ljust(width)}  {what}" for syntax, what, _ in _USAGE.values()]
        lines.append(f"Say @{bot_name} help <action> for more about one of them.")
        return "\n".join(lines)
    syntax, what, _ = _USAGE[topic]
    lines = [f"@{bot_name} {syntax}: {what}.", f"Example: {_example(topic, bot_name)}"]
    if topic is Action.FIX:
        lines.append(f"Example: @{bot_name} fix owner/repo#42 agent=claude")
        lines.append(_ISSUE_FORMS[0].upper() + _ISSUE_FORMS[1:] + ".")
    elif topic in JOB_ACTIONS or topic is Action.QUIET:
        lines.append(_JOB_FORMS[0].upper() + _JOB_FORMS[1:] + ".")
    return "\n".join(lines)


# -- addressing the bot -------------------------------------------------------------------------


def _clean_bot_name(bot_name: str) -> str:
    return bot_name.strip().lstrip("@") or "stitch"


# <@123>, <@!123> (Discord nickname mention), <@&123> (a role), <@U123|name> (Slack)
_PLATFORM_MENTION = re.compile(r"<@[!&]?([^\s<>|]{1,100})(?:\|[^<>]{0,100})?>")


def _strip_mention(text: str, name: str, bot_ids: Collection[str]) -> str | None:
    """The text after a leading mention of the bot, or None when it does not start with one."""
    stripped = text.lstrip()
    by_name = re.match(rf"@{re.escape(name)}(?![\w.\-])", stripped, re.IGNORECASE)
    if by_name is not None:
        return stripped[by_name.end() :]
    by_id = _PLATFORM_MENTION.match(stripped)
    if by_id is not None and by_id.group(1) in bot_ids:
        return stripped[by_id.end() :]
    return None


def parse_command(
    text: str, *, bot_name: str = "stitch", bot_ids: Collection[str] = ()
) -> Command | None:
    """Parse a chat message: None when it is not addressed to the bot (``@stitch ...``, or a
    platform mention ``<@123> ...`` whose id is in ``bot_ids``); raises
    ``CommandSyntaxError`` when it is addressed to the bot but is not a valid command."""
    name = _clean_bot_name(bot_name)
    body = _strip_mention(text, name, bot_ids)
    if body is None:
        return None
    # "@stitch @stitch fix #42", "<@123> @stitch: fix #42": one mention is enough.
    while True:
        body = body.lstrip()
        if body[:1] in {":", ","}:
            body = body[1:]
        again = _strip_mention(body, name, bot_ids)
        if again is None:
            break
        body = again
    return parse_body(body, bot_name=name)


# -- the body -----------------------------------------------------------------------------------

_OPTION = re.compile(r"([^=\s]*)=(\S*)")
_PROFILE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SPACES_AROUND_EQUALS = re.compile(r"\s*=\s*")
_ANGLE_LINK = re.compile(r"<((?:https?://)[^<>|\s]{1,1000})(?:\|[^<>]{0,200})?>", re.IGNORECASE)


def _tokens(body: str) -> list[str]:
    # Slack and Discord wrap links in <...> (Slack adds |label): keep the bare URL.
    body = _ANGLE_LINK.sub(r"\1", body)
    return _SPACES_AROUND_EQUALS.sub("=", body).split()


def parse_body(text: str, *, bot_name: str = "stitch") -> Command:
    """Parse the part after the mention (``fix #42``); slash commands and the console REPL
    use this directly. Raises ``CommandSyntaxError``."""
    name = _clean_bot_name(bot_name)
    if len(text) > MAX_BODY_CHARS:
        raise CommandSyntaxError(
            f"that command is {len(text)} characters long; commands are short "
            f"(at most {MAX_BODY_CHARS})",
            _example(Action.HELP, name, ""),
        )
    tokens = _tokens(text)
    if not tokens:
        names = ", ".join(a.value for a in Action)
        raise CommandSyntaxError(f"say what to do: one of {names}", _example(Action.FIX, name))
    word, args = tokens[0], tokens[1:]
    action = _action(word, name)
    options: dict[str, str] = {}
    positional: list[str] = []
    for token in args:
        option = _OPTION.fullmatch(token)
        if option is None or "://" in token or "/" in option.group(1):
            positional.append(token)
            continue
        key, value = option.group(1).lower(), option.group(2)
        if action is not Action.FIX or key != "agent":
            accepted = "agent=<profile>" if action is Action.FIX else "no options"
            raise CommandSyntaxError(
                f"unknown option {_quote(token)}: {action.value} takes {accepted}",
                _example(action, name),
            )
        if key in options:
            raise CommandSyntaxError(
                f"{key}= is given twice; give it once",
                _example(action, name, "#42 agent=claude"),
            )
        options[key] = value
    if action is Action.FIX:
        return _fix(positional, options.get("agent"), name)
    if action in JOB_ACTIONS:
        ref = _required(action, positional, name, what="a job")
        return Command(action, job=parse_job_ref(ref, example=_example(action, name)))
    if action is Action.QUIET:
        quiet = _one(action, positional, name)
        if quiet is None:
            return Command(action)
        return Command(action, job=parse_job_ref(quiet, example=_example(action, name)))
    if action is Action.JOBS:
        if positional:
            raise CommandSyntaxError(
                f"jobs takes no arguments, but got {_quote(' '.join(positional))}",
                _example(Action.JOBS, name),
            )
        return Command(action)
    topic = _one(action, positional, name)
    return Command(action, topic=None if topic is None else _action(topic, name, help_topic=True))


def _action(word: str, bot_name: str, *, help_topic: bool = False) -> Action:
    try:
        return Action(word.lower())
    except ValueError:
        pass
    names = [a.value for a in Action]
    close = difflib.get_close_matches(word.lower()[:50], names, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean {close[0]}?"
        example = _example(Action(close[0]), bot_name)
    else:
        hint = f"the actions are {', '.join(names)}"
        example = _example(Action.HELP, bot_name, "")
    if help_topic:
        example = _example(Action.HELP, bot_name, close[0] if close else "fix")
        raise CommandSyntaxError(f"there is no action {_quote(word)} to explain; {hint}", example)
    raise CommandSyntaxError(f"unknown action {_quote(word)}; {hint}", example)


def _one(action: Action, positional: list[str], bot_name: str) -> str | None:
    """The one argument of ``action`` (None without one); more than one is an error."""
    if len(positional) > 1:
        extra = " ".join(positional[1:])
        raise CommandSyntaxError(
            f"too many arguments: {action.value} takes one, {_quote(extra)} is left over",
            _example(action, bot_name),
        )
    return positional[0] if positional else None


def _required(action: Action, positional: list[str], bot_name: str, *, what: str) -> str:
    ref = _one(action, positional, bot_name)
    if ref is None:
        raise CommandSyntaxError(
            f"{action.value} needs {what}: {_USAGE[action][0]}", _example(action, bot_name)
        )
    return ref


def _fix(positional: list[str], agent: str | None, bot_name: str) -> Command:
    ref = _required(Action.FIX, positional, bot_name, what="an issue")
    issue = parse_issue_ref(ref, example=_example(Action.FIX, bot_name))
    if agent is not None and _PROFILE.fullmatch(agent) is None:
        raise CommandSyntaxError(
            f"agent={_quote(agent)} is not a profile name: use 1 to 64 letters, digits, "
            "'_', '.' or '-'",
            _example(Action.FIX, bot_name, "#42 agent=claude"),
        )
    return Command(Action.FIX, issue=issue, agent=agent)


# -- references ---------------------------------------------------------------------------------

_SEGMENT = r"[A-Za-z0-9_.\-]{1,100}"
_SHORT_REF = re.compile(rf"(?:({_SEGMENT}(?:/{_SEGMENT}){{1,10}}))?#([0-9]{{1,100}})")
_URL = re.compile(
    r"(?:https?://)(?:www\.)?([A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?)"
    rf"/({_SEGMENT}(?:/{_SEGMENT}){{1,10}}?)"
    r"(?:/-)?/(issues|pull|pulls|merge_requests)/([0-9]{1,100})/?(?:[?#][^\s]{0,1000})?",
    re.IGNORECASE,
)
_HEX = re.compile(r"[0-9a-fA-F\-]{1,100}")
_UUID_DASHES = (8, 12, 16, 20)  # after how many hex digits the canonical form has a dash


def parse_issue_ref(token: str, *, example: str = "@stitch fix #42") -> IssueRef:
    """``#42``, ``owner/repo#42`` or an issue URL; raises ``CommandSyntaxError``."""
    short = _SHORT_REF.fullmatch(token)
    if short is not None:
        repo, digits = short.group(1), short.group(2)
        _check_repo(repo, token, example)
        return IssueRef(_number(digits, token, example), repo.lower() if repo else None)
    url = _URL.fullmatch(token)
    if url is not None:
        host, repo, kind, digits = url.groups()
        _check_repo(repo, token, example)
        if kind.lower() != "issues":
            raise CommandSyntaxError(
                f"{_quote(token)} is a pull or merge request; give the issue it fixes", example
            )
        return IssueRef(_number(digits, token, example), repo.lower(), host.lower())
    if token.lower().startswith(("http://", "https://")):
        hint = "an issue URL ends in /issues/<number> (GitLab: /-/issues/<number>)"
    elif token.isascii() and token.isdigit():
        hint = f"did you mean #{token}?"
    else:
        hint = _ISSUE_FORMS
    raise CommandSyntaxError(f"{_quote(token)} is not an issue; {hint}", example)


def _check_repo(repo: str | None, token: str, example: str) -> None:
    if repo is not None and any(part in {".", "..", "-"} for part in repo.split("/")):
        raise CommandSyntaxError(f"{_quote(token)} does not name a repository", example)


def _number(digits: str, token: str, example: str) -> int:
    significant = digits.lstrip("0")
    if not significant:
        raise CommandSyntaxError(f"{_quote(token)}: issue numbers start at 1", example)
    if len(significant) > 10 or int(significant) > MAX_ISSUE_NUMBER:
        raise CommandSyntaxError(f"{_quote(token)}: that issue number is too large", example)
    return int(significant)


def parse_job_ref(token: str, *, example: str = "@stitch status 3f2a9c1e") -> JobRef:
    """A job id, an id prefix of at least 6 hex digits or an issue ref; raises
    ``CommandSyntaxError``."""
    if "#" in token or "/" in token:
        return JobRef(issue=parse_issue_ref(token, example=example))
    if _HEX.fullmatch(token) is None:
        raise CommandSyntaxError(f"{_quote(token)} is not a job; {_JOB_FORMS}", example)
    digits = token.replace("-", "").lower()
    canonical = _dashed(digits)
    if token.lower() not in {digits, canonical, canonical + "-"}:
        raise CommandSyntaxError(
            f"{_quote(token)} is not a job id: its dashes are out of place "
            "(ids look like 3f2a9c1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b)",
            example,
        )
    if len(digits) > 32:
        raise CommandSyntaxError(f"{_quote(token)} is longer than a job id", example)
    if len(digits) == 32:
        return JobRef(job_id=UUID(hex=digits))
    if len(digits) < MIN_PREFIX_CHARS:
        hint = f"; for an issue say #{token}" if token.isdigit() else ""
        raise CommandSyntaxError(
            f"{_quote(token)} is too short to find a job: give at least {MIN_PREFIX_CHARS} "
            f"characters of its id{hint}",
            example,
        )
    return JobRef(prefix=canonical)


def _dashed(digits: str) -> str:
    parts, start = [], 0
    for end in _UUID_DASHES:
        if len(digits) <= end:
            break
        parts.append(digits[start:end])
        start = end
    parts.append(digits[start:])
    return "-".join(parts)


def _quote(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"'{shown}'"
