"""Contract-suite fixtures: an engine whose time only moves when a test says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from stitchwork.clock import FakeClock
from stitchwork.runtime.engine import Engine
from tests.conftest import Backend
from tests.contract.helpers import default_workspace


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(backend: Backend, clock: FakeClock) -> AsyncIterator[Engine]:
    """Like ``engine`` (both backends), but on ``clock``: leases and due times are exact."""
    eng = await backend.open_engine(clock=clock)
    try:
        yield eng
    finally:
        await eng.close()


@pytest.fixture
async def clocked_ws(clocked: Engine) -> UUID:
    return await default_workspace(clocked)
