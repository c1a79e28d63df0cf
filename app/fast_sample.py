"""`POST /sample`'s common case answered in plain ASGI, without FastAPI's per-request machinery.

The hot route's framework work (matching every route, resolving four dependencies, parsing and
validating the body, building a `Response`) cost more event-loop time per `/sample` than the
model itself. `FastSample` answers the common request, a JSON body that `SampleRequest` accepts and
a PNG answer (no query string, no `Accept: application/json`), with the same validation
(`SampleRequest.model_validate_json`), the same engine call, the same bytes and headers, and the
same error bodies. Everything else (JSON answers, invalid bodies, other content types) falls
through to the FastAPI route with its body replayed, so 422s, the OpenAPI schema and every edge
case stay the route's own. It sits inside `RequestGuardMiddleware` (API key, drain, deadline) and
starts the request deadline as the route's dependency does; the route's template is set in the
scope, so metrics and the access log name it as before.
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine import check_digits, sample_prior_name
from app.errors import ServiceError
from app.guard import start_deadline
from app.responses import square_grid_png
from app.schemas import SampleRequest

MAX_FAST_BODY = 4096  # a SampleRequest is under 100 bytes; anything bigger takes the slow path


class FastSample:
    """ASGI middleware: answers the plain `POST /sample`, passes everything else on untouched."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.route = _find_route(fastapi_app.router.routes, "/sample")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/sample"
            or scope["method"] != "POST"
            or scope["query_string"]
        ):
            await self.app(scope, receive, send)
            return
        content_type = accept = b""
        length = 0
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else MAX_FAST_BODY + 1
            elif name == b"accept":
                accept = value
        if (
            content_type.split(b";")[0].strip().lower() != b"application/json"
            or length > MAX_FAST_BODY
            or (b"application/json" in accept and b"image/png" not in accept)
        ):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        try:
            request = SampleRequest.model_validate_json(body)
        except ValidationError:  # the route answers with its own 422
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = self.route
        try:
            await start_deadline(Request(scope, receive))  # as the route's dependency does
            engine = self.fastapi_app.state.engine
            model = engine.current
            digits = request.digit_list
            check_digits(model, request.prior, digits)  # the route's 422 for undrawable digits
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            _, images = await engine.sample(
                model, request.n, seed, request.temperature, request.prior, digits
            )
            png = square_grid_png(images)
        except ServiceError as exc:
            await self._error(exc, scope, receive, send)
            return
        headers = [
            (b"content-type", b"image/png"),
            (b"content-length", str(len(png)).encode()),
            (b"x-seed", str(seed).encode()),
            (b"x-prior", sample_prior_name(model, request.prior, digits).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": png})

    async def _error(self, exc: ServiceError, scope: Scope, receive: Receive, send: Send) -> None:
        """The response the app's own `ServiceError` handler gives (same body, status, headers)."""
        handler = self.fastapi_app.exception_handlers[ServiceError]
        response = await handler(Request(scope, receive), exc)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    messages = [await receive()]
    while messages[-1]["type"] == "http.request" and messages[-1].get("more_body", False):
        messages.append(await receive())
    return b"".join(m.get("body", b"") for m in messages), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that hands out the body messages already read, then the real ones."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _find_route(routes: list, path: str) -> object:
    """The route object FastAPI puts in `scope["route"]` for `path` (looking inside included
    routers), so metrics and the access log label the fast path as the route."""
    for route in routes:
        if getattr(route, "path", None) == path:
            return route
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        found = _find_route(inner.routes, path) if inner is not None else None
        if found is not None:
            return found
    return None
