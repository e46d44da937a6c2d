"""Request dependencies: the engine built by the composition root, and the calling key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stitchwork.errors import Unauthorized
from stitchwork.runtime.engine import Engine
from stitchwork.services.auth import Principal


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_principal(
    request: Request, engine: Annotated[Engine, Depends(get_engine)]
) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() != "bearer":
        # Never echo the header: it may be a bare key sent without the scheme.
        raise Unauthorized("unsupported Authorization scheme: send 'Authorization: Bearer <key>'")
    return await engine.auth.authenticate(token.strip() or None)


EngineDep = Annotated[Engine, Depends(get_engine)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
