"""Settings loading and coroutine running shared by every command."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from stitchwork.cli.output import fail
from stitchwork.config import Settings
from stitchwork.errors import StitchworkError

T = TypeVar("T")


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{_setting_name(e['loc'])}: {e['msg']}" for e in exc.errors())
        fail(f"invalid configuration: {problems}", code=2)


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable a user would set, e.g. STITCHWORK_WORKER_CONCURRENCY."""
    if not loc:
        return "settings"
    return "STITCHWORK_" + str(loc[0]).upper()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning stitchwork errors into a one-line message."""
    try:
        return asyncio.run(coro)
    except StitchworkError as exc:
        fail(exc.message)
