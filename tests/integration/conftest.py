"""Integration fixtures: the real FastAPI app over ``httpx.ASGITransport``, on both backends.

``api`` is a client of the 'default' workspace; ``client_for`` makes a client for any other
workspace (a fresh key), so tests can prove that one workspace never sees another's jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import httpx
import pytest

from stitchwork.api.app import create_app
from stitchwork.runtime.engine import Engine

BASE_URL = "http://stitchwork.test"

ClientFactory = Callable[[str], Awaitable[httpx.AsyncClient]]


def _client(engine: Engine, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(engine)),
        base_url=BASE_URL,
        headers=headers,
    )


async def workspace_key(
    engine: Engine,
    workspace: str,
    name: str = "test",
    role: str = "admin",
    scopes: Sequence[str] = (),
) -> str:
    """A new clear API key for ``workspace`` (created if missing). Admin unless ``role``
    says otherwise: most tests are about what the API does, not who may ask."""
    _, key = await engine.auth.create_key(workspace, name, role, scopes)
    return key


@pytest.fixture
async def api_key(engine: Engine) -> str:
    return await workspace_key(engine, "default")


@pytest.fixture
async def api(engine: Engine, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the 'default' workspace, authenticated with a bearer key."""
    async with _client(engine, api_key) as client:
        yield client


@pytest.fixture
async def anonymous(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no Authorization header."""
    async with _client(engine, None) as client:
        yield client


@pytest.fixture
async def client_for(engine: Engine) -> AsyncIterator[ClientFactory]:
    """``await client_for("other")``: a client with a new key of workspace ``other``."""
    async with AsyncExitStack() as stack:

        async def make(workspace: str) -> httpx.AsyncClient:
            key = await workspace_key(engine, workspace)
            return await stack.enter_async_context(_client(engine, key))

        yield make
