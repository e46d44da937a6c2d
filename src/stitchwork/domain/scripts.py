"""Scripts of the built-in ``script`` agent: their shape, checked before anything runs.

A script is a list of actions (``write``, ``append``, ``delete``, ``rename``, ``run``,
``sleep``, ``tokens``); ``on_attempt`` replaces it on a given attempt. Paths are checked
lexically here; the agent checks symlinks when it acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from stitchwork.errors import InvalidRequest


def parse_script(payload: Mapping[str, Any], attempt: int) -> list[dict[str, Any]]:
    """The actions a ``ScriptAgent`` applies on ``attempt``, checked without touching anything.

    Raises:
        InvalidRequest: The payload has no usable script, or an action is malformed or names a
            path that is absolute, uses ``..`` or points into ``.git``.
    """
    on_attempt = payload.get("on_attempt", {})
    if not isinstance(on_attempt, Mapping) or not all(
        isinstance(key, str) and key.isdigit() for key in on_attempt
    ):
        raise InvalidRequest(
            "'on_attempt' must map attempt numbers (as strings) to action lists",
            field="on_attempt",
        )
    actions = on_attempt.get(str(attempt), payload.get("script"))
    if not isinstance(actions, list):
        raise InvalidRequest("the script agent needs a 'script' list of actions", field="script")
    for index, action in enumerate(actions, 1):
        reason = _action_problem(action)
        if reason is not None:
            raise InvalidRequest(f"script action {index}: {reason}", field="script", action=index)
    return actions


_ACTION_KEYS: dict[str, frozenset[str]] = {
    "write": frozenset({"write", "content"}),
    "append": frozenset({"append", "content"}),
    "delete": frozenset({"delete"}),
    "rename": frozenset({"rename"}),
    "run": frozenset({"run"}),
    "sleep": frozenset({"sleep"}),
    "tokens": frozenset({"tokens"}),
}


def action_kind(action: Mapping[str, Any]) -> str:
    return next(kind for kind in _ACTION_KEYS if kind in action)


def _action_problem(action: Any) -> str | None:
    """What is wrong with one action, or ``None``."""
    kinds = [kind for kind in _ACTION_KEYS if isinstance(action, dict) and kind in action]
    if len(kinds) != 1:
        return f"must be an object with exactly one of {', '.join(_ACTION_KEYS)}"
    kind, value = kinds[0], action[kinds[0]]
    if set(action) != _ACTION_KEYS[kind]:
        return f"{kind!r} takes exactly the keys {sorted(_ACTION_KEYS[kind])}"
    if kind in ("write", "append") and not isinstance(action["content"], str):
        return "'content' must be a string"
    if kind in ("write", "append", "delete"):
        return _path_problem(value)
    if kind == "rename":
        if not (isinstance(value, list) and len(value) == 2):
            return "'rename' takes a list [from, to]"
        return _path_problem(value[0]) or _path_problem(value[1])
    if kind == "run":
        text = isinstance(value, str) and bool(value.strip())
        argv = (
            isinstance(value, list) and bool(value) and all(isinstance(a, str) and a for a in value)
        )
        return None if text or argv else "'run' takes a non-empty command string or argument list"
    if kind == "sleep":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
            return "'sleep' takes seconds between 0 and 3600"
        return None
    pair_ok = isinstance(value, list) and len(value) == 2
    if not pair_ok or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        return "'tokens' takes [input, output], two non-negative integers"
    return None


def _path_problem(raw: Any) -> str | None:
    """Why ``raw`` is not a safe worktree-relative path (lexically), or ``None``."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        return "a path must be a non-empty string"
    path = PurePosixPath(raw)
    if path.is_absolute():
        return f"absolute path {raw!r} is refused: paths are relative to the worktree"
    if ".." in path.parts:
        return f"path {raw!r} is refused: '..' could leave the worktree"
    if not path.parts:
        return f"path {raw!r} names the worktree itself"
    if path.parts[0] == ".git":
        return f"path {raw!r} is refused: agents do not touch .git"
    return None
