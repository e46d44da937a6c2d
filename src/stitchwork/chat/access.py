"""Who may do what from chat, and how often: the bridge's authorisation and rate limit.

``ChatAccess`` reads ``STITCHWORK_CHAT_USERS``: keys are ``"<platform>:<user id>"``,
``"<platform>:role:<role>"`` or ``"<platform>:*"``; values name a workspace and the actions
allowed there. ``CommandRateLimiter`` is a token bucket per chat user on an injected clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from stitchwork.chat.base import ChatUser
from stitchwork.clock import Clock
from stitchwork.domain.chat_commands import Action
from stitchwork.errors import ConfigError

__all__ = ["ChatAccess", "CommandRateLimiter", "Grant", "user_key"]

ALL_ACTIONS = frozenset(Action)
_SETTING = "STITCHWORK_CHAT_USERS"


def user_key(user: ChatUser) -> str:
    """The key a user has in ``STITCHWORK_CHAT_USERS`` (``"slack:U024BE7LH"``)."""
    return f"{user.platform}:{user.user_id}"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one chat user may do: ``actions`` in the workspace named ``workspace``."""

    workspace: str
    actions: frozenset[Action]

    def allows(self, action: Action) -> bool:
        return action is Action.HELP or action in self.actions


class ChatAccess:
    """The ``STITCHWORK_CHAT_USERS`` map, checked once when the bridge is built.

    A user's own entry wins; otherwise the entries of their roles (in the order the platform
    lists the roles; the first one names the workspace and the actions of every role entry for
    that workspace add up); otherwise the platform's ``*`` entry; otherwise nothing.
    """

    def __init__(self, entries: Mapping[str, Mapping[str, str | list[str]]]) -> None:
        self._grants = {key: _grant(key, value) for key, value in entries.items()}

    def grant_for(self, user: ChatUser) -> Grant | None:
        """What ``user`` may do, or None for a user nobody allowed anything."""
        own = self._grants.get(user_key(user))
        if own is not None:
            return own
        by_role = [
            grant
            for role in user.roles
            if (grant := self._grants.get(f"{user.platform}:role:{role}")) is not None
        ]
        if by_role:
            workspace = by_role[0].workspace
            actions = frozenset().union(*(g.actions for g in by_role if g.workspace == workspace))
            return Grant(workspace, actions)
        return self._grants.get(f"{user.platform}:*")

    def with_default(self, key: str, grant: Grant) -> ChatAccess:
        """A copy that also grants ``grant`` to ``key`` unless it has an entry already (the
        console's local user)."""
        copy = ChatAccess({})
        copy._grants = {key: grant, **self._grants}
        return copy


def _grant(key: str, value: Mapping[str, str | list[str]]) -> Grant:
    if ":" not in key or key.startswith(":") or key.endswith(":"):
        raise ConfigError(
            f"{_SETTING}: {key!r} is not a chat user; use '<platform>:<user id>', "
            "'<platform>:role:<role>' or '<platform>:*' (e.g. 'slack:U024BE7LH')",
            field="chat_users",
        )
    workspace = value.get("workspace")
    if not isinstance(workspace, str) or not workspace.strip():
        raise ConfigError(
            f'{_SETTING}: {key!r} needs a workspace name, e.g. {{"workspace": "default", '
            '"actions": ["fix", "status"]}',
            field="chat_users",
        )
    unknown_keys = sorted(set(value) - {"workspace", "actions"})
    if unknown_keys:
        raise ConfigError(
            f"{_SETTING}: {key!r} has unknown keys {unknown_keys}; use workspace and actions",
            field="chat_users",
        )
    raw = value.get("actions", [])
    if raw == "*" or raw == ["*"]:
        return Grant(workspace, ALL_ACTIONS)
    if isinstance(raw, str):
        raw = [raw]
    actions: set[Action] = set()
    for name in raw:
        try:
            actions.add(Action(name.strip().lower()))
        except ValueError:
            names = ", ".join(a.value for a in Action)
            raise ConfigError(
                f"{_SETTING}: {key!r} allows the unknown action {name!r}; actions are {names} "
                'or "*"',
                field="chat_users",
            ) from None
    return Grant(workspace, frozenset(actions))


class CommandRateLimiter:
    """A token bucket per user: a burst of ``per_minute`` commands, refilled evenly.

    ``take`` answers how long to wait (0 when the command may go ahead). Buckets that are full
    again are forgotten, so the table only holds recently active users.
    """

    MAX_USERS = 10_000

    def __init__(self, per_minute: int, clock: Clock) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, datetime]] = {}  # key -> (tokens, as of)

    def take(self, key: str) -> float:
        """Use one token of ``key``'s bucket; the seconds until one is available when empty."""
        now = self.clock.now()
        tokens = self._tokens(key, now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_USERS:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.refill_per_s

    def _tokens(self, key: str, now: datetime) -> float:
        state = self._buckets.get(key)
        if state is None:
            return self.capacity
        tokens, as_of = state
        elapsed = max((now - as_of).total_seconds(), 0.0)
        return min(self.capacity, tokens + elapsed * self.refill_per_s)

    def _forget_full(self, now: datetime) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.capacity]:
            del self._buckets[key]
