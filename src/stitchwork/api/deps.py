"""Request dependencies: the engine built by the composition root, the calling key, and the
scope each route needs (``require``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant

from stitchwork.errors import Unauthorized
from stitchwork.runtime.engine import Engine
from stitchwork.services.auth import SUBMIT_PREFIX, Principal, Scope, check_grants

# What ``POST /jobs`` declares: the scope of the submitted type, checked once the body is read.
SUBMIT_TYPE_SCOPE = f"{SUBMIT_PREFIX}<type>"
REQUIRED_SCOPE = "required_scope"  # the attribute a ``require`` dependency carries


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


def require(scope: Scope) -> Any:
    """``Depends`` on the calling key, refused with 403 naming ``scope`` unless the key holds
    it. Every authenticated route declares its scope this way:
    ``principal: Annotated[Principal, require(Scope.JOBS_READ)]``."""

    async def dependency(principal: PrincipalDep) -> Principal:
        principal.require(scope)
        return principal

    return _declared(dependency, scope)


def require_submit() -> Any:
    """``Depends`` on the calling key for ``POST /jobs``: the scope is that of the submitted
    type (``jobs:submit:<type>``), which the route checks once the body is parsed (a
    dependency cannot read the body FastAPI validates)."""

    async def dependency(principal: PrincipalDep) -> Principal:
        return principal

    return _declared(dependency, SUBMIT_TYPE_SCOPE)


def _declared(dependency: Callable[[Principal], Awaitable[Principal]], scope: str) -> Any:
    if scope != SUBMIT_TYPE_SCOPE:
        check_grants("reader", [scope])  # a misspelt scope fails at import, not per request
    setattr(dependency, REQUIRED_SCOPE, scope)
    dependency.__name__ = f"require_{scope.replace(':', '_').replace('<type>', 'type')}"
    return Depends(dependency)


def required_scope(route: object) -> str | None:
    """The scope a route (or an included route's context) declares with ``require``
    (``None``: it declares none)."""
    dependant: Dependant | None = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        scope = getattr(current.call, REQUIRED_SCOPE, None)
        if isinstance(scope, str):
            return scope
        pending.extend(current.dependencies)
    return None
