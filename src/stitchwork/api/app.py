"""The FastAPI app factory. No globals: the engine is built by the caller and passed in."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from stitchwork import __version__
from stitchwork.api.deps import required_scope
from stitchwork.api.errors import install_error_handlers
from stitchwork.api.limits import BodySizeLimit
from stitchwork.api.routes import executions, health, jobs, locks, metrics, queues, stream, ws
from stitchwork.runtime.engine import Engine

API_PREFIX = "/api/v1"


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(
        title="stitchwork",
        version=__version__,
        description="Job orchestrator for coding agents. Bearer API keys scope every call to "
        "a workspace; each operation names the scope it needs (x-required-scope), a key "
        "without it gets 403 naming it; errors are application/problem+json.",
    )
    app.state.engine = engine
    install_error_handlers(app)
    api = APIRouter(prefix=API_PREFIX)
    for routes in (jobs, queues, executions, locks, stream, ws):
        _document_scopes(routes.router)
        api.include_router(routes.router)
    app.include_router(api)
    if engine.settings.slack_signing_secret or engine.settings.mattermost_token:
        from stitchwork.chat.slack import mount_slack  # only when Slack/Mattermost is set up

        mount_slack(app, engine, API_PREFIX)
    app.include_router(health.router)
    _document_scopes(metrics.router)
    app.include_router(metrics.router)
    app.add_middleware(BodySizeLimit, max_bytes=engine.settings.max_body_bytes)
    return app


def _document_scopes(router: APIRouter) -> None:
    """Put each route's declared scope into its OpenAPI operation, for clients and /docs
    (before the router is included: an included router's routes are copies made later)."""
    for route in router.routes:
        scope = required_scope(route)
        if isinstance(route, APIRoute) and scope is not None:
            route.openapi_extra = {**(route.openapi_extra or {}), "x-required-scope": scope}
