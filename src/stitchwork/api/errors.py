"""One table from the exception tree to HTTP status, rendered as ``application/problem+json``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stitchwork.errors import (
    BackendUnavailable,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StitchworkError,
    Unauthorized,
)

PROBLEM = "application/problem+json"

STATUS_BY_ERROR: tuple[tuple[type[StitchworkError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
    (BackendUnavailable, 503),
)


def problem(status: int, detail: str, *, title: str | None = None, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **{k: v for k, v in extra.items() if v is not None},
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def status_for(exc: StitchworkError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


async def _stitchwork_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StitchworkError)
    field = exc.fields.get("field")
    extra = {
        k: v
        for k, v in exc.fields.items()
        if k != "field"
        and (
            isinstance(v, str | int | float | bool)
            or (isinstance(v, list) and all(isinstance(i, str) for i in v))  # a cycle's nodes
        )
    }
    errors = [{"field": field, "message": exc.message}] if field else None
    return problem(status_for(exc), exc.message, title=exc.title, errors=errors, **extra)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return problem(400, f"malformed JSON body: {reason}", title="Malformed JSON")
    fields = [{"field": _field_name(e["loc"]), "message": e["msg"]} for e in errors]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return problem(422, detail, title="Invalid request", errors=fields)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StitchworkError, _stitchwork_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
