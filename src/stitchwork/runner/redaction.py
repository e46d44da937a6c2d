"""Keeping the server's secrets out of the event log: what a job's commands print is redacted.

An agent that reads a key (from a file it should not see, or one a person left in the repo)
and prints it would otherwise write it into the append-only event log for good. So the output
of every command a job starts passes through a ``Redactor`` before it becomes an event, a step's
output tail or a job's result: API keys (``sw_<prefix>_<secret>``) and the server's configured
secret values (chat tokens, passwords in database, queue and bus URLs, the CLI's key) become
``[redacted]``.

Output is redacted line by line (``run_process`` delivers whole lines), so a secret split over
two chunks of an over-long line (64 KiB without a newline) could pass; nothing else does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

REDACTED = "[redacted]"
API_KEY = re.compile(r"sw_[0-9a-f]{12}_[A-Za-z0-9_-]{16,}")
MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words


class Redactor:
    """Replaces API keys and the given secret values in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None

    def __call__(self, text: str) -> str:
        text = API_KEY.sub(REDACTED, text)
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return text


def url_secrets(url: str) -> list[str]:
    """The password (and user:password pair) of a URL such as a database URL."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    if not password:
        return []
    return [password, f"{parts.username}:{password}"]
