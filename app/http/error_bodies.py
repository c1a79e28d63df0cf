"""The one place where errors become HTTP: the status comes from the error's type, one JSON shape.

Every error body is `{"detail": ...}`; a 500 adds the request id and says nothing more, because
an exception's text may hold paths, data or internals. The log line with that id has the rest.
Every 503 says when to come back (`Retry-After`, 1 s unless the refusal knows better).
Under `/v2/` (the Open Inference Protocol) the same errors read `{"error": "..."}`, the shape that
protocol's clients parse.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.errors import NotADigit, Overloaded, ServiceError, Unauthorized
from app.http.request_id import current_request_id

log = logging.getLogger("app")


PROTOCOL_PREFIX = "/v2"


def error_response(
    path: str, status: int, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The answer to a request for `path` that failed with `status`, its body as `error_body`
    writes it; a 503 always says when to retry."""
    if status == 503:
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(error_body(path, status, detail), status, headers=headers)


def error_body(path: str, status: int, detail: Any) -> dict[str, Any]:
    """The JSON of every error answer, also the edge's (which writes bytes, not ASGI), and the one
    place its shape is decided from the request's path: `{"detail": ...}`, or the Open Inference
    Protocol's `{"error": "<text>"}` under `/v2`; a 500 also names the request, to quote in a bug
    report."""
    body: dict[str, Any]
    if speaks_protocol(path):
        body = {"error": detail if isinstance(detail, str) else json.dumps(detail)}
    else:
        body = {"detail": detail}
    if status == 500:
        body["request_id"] = current_request_id()
    return body


def internal_error(path: str = "") -> JSONResponse:
    """The answer to a bug: a 500 with nothing in it but the request id (in the shape `path`'s
    clients parse: `{"error": ...}` under `/v2`)."""
    return error_response(path, 500, "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Maps the service's errors, FastAPI's validation errors and Starlette's HTTP errors.

    Anything else is answered with `internal_error()` by `RequestContextMiddleware`; Starlette's
    own last resort (`ServerErrorMiddleware`, outside it) answers in the same shape.
    """

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request.url.path)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_safe_error(e) for e in exc.errors()]
        return error_response(request.url.path, 422, errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, exc.detail, exc.headers)


def service_error_response(path: str, exc: ServiceError) -> JSONResponse:
    """The answer to one of the service's own errors, with the headers its status calls for."""
    overloaded = isinstance(exc, Overloaded)
    if overloaded or exc.status_code >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.detail)
    headers = None
    if overloaded:
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, NotADigit):
        headers = exc.headers
    return error_response(path, exc.status_code, exc.detail, headers)


def speaks_protocol(path: str) -> bool:
    """Whether a path is one of the Open Inference Protocol's (`/v2`, `/v2/...`)."""
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


def _safe_error(error: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's error without the offending input (it may be NaN or megabytes) or raw ctx."""
    safe = {k: error[k] for k in ("type", "loc", "msg") if k in error}
    if "ctx" in error:
        safe["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
    return safe
