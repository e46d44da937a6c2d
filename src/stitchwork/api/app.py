"""The FastAPI app factory. No globals: the engine is built by the caller and passed in."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from stitchwork import __version__
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
        "a workspace; errors are application/problem+json.",
    )
    app.state.engine = engine
    install_error_handlers(app)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(jobs.router)
    api.include_router(queues.router)
    api.include_router(executions.router)
    api.include_router(locks.router)
    api.include_router(stream.router)
    api.include_router(ws.router)
    app.include_router(api)
    if engine.settings.slack_signing_secret or engine.settings.mattermost_token:
        from stitchwork.chat.slack import mount_slack  # only when Slack/Mattermost is set up

        mount_slack(app, engine, API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(BodySizeLimit, max_bytes=engine.settings.max_body_bytes)
    return app
