"""`POST /sample`'s common case answered in plain ASGI, in front of the whole middleware stack.

The hot route's framework work cost more event-loop time per `/sample` than the model itself:
matching every route, resolving four dependencies, parsing and validating the body, building a
`Response`, and passing each message through six middleware layers (the request context, the
guard, two body limits, Starlette's error middlewares), each with its own `send` wrapper.
`FastSample` is the outermost layer and answers the common request itself: a JSON body of known
small length that `SampleRequest` accepts, asking for a PNG (no query string, no
`Accept: application/json`), from an authorised caller while the service is not draining, without
an `Origin` header (CORS stays the stack's). It does what those layers do for it, with their own
functions: the request id (`request_id_for`), the API key (`authorized`), the deadline and its 504,
the route's 422 for undrawable digits, the `ServiceError` handler's answers, a 500 with the id for
a bug, and the metrics and access-log line under the route's template (`record_request`). It gives
the same bytes and headers as the route.

Anything else, including every refusal of the guard (401, the drain's 503) and every invalid body,
falls through to the stack with the body replayed, so those answers stay the stack's own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.engine import check_digits, sample_prior_name
from app.error_responses import error_response, internal_error
from app.errors import ServiceError
from app.guard import REQUEST_DEADLINE, authorized, bearer_value, timeout_detail
from app.lifecycle import Lifecycle
from app.request_context import record_request
from app.request_id import REQUEST_ID, request_id_for
from app.responses import square_grid_png
from app.schemas import SampleRequest

log = logging.getLogger("app")
MAX_FAST_BODY = 4096  # a SampleRequest is under 100 bytes; anything bigger takes the stack


class FastSample:
    """ASGI middleware: answers the plain `POST /sample`, passes everything else on untouched."""

    def __init__(
        self, app: ASGIApp, fastapi_app: FastAPI, settings: Settings, lifecycle: Lifecycle
    ) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.route = _find_route(fastapi_app.router.routes, "/sample")
        self.api_key = bearer_value(settings.api_key)
        self.lifecycle = lifecycle
        self.timeout_s = settings.request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._takes(scope):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        try:
            request = SampleRequest.model_validate_json(body)
        except ValidationError:  # the route answers with its own 422
            await self.app(scope, _replay(messages, receive), send)
            return
        request_id = request_id_for(scope)
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        scope["route"] = self.route
        try:
            status, headers, content = await self._answer(scope, receive, request)
        except Exception:
            log.exception("unhandled error")
            status, headers, content = _parts(internal_error())
        headers.append((b"x-request-id", request_id.encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            record_request(scope, status, time.perf_counter() - start, request_id)
            REQUEST_ID.reset(token)

    def _takes(self, scope: Scope) -> bool:
        """Whether this is the common request, from a caller the guard would let through."""
        if (
            scope["type"] != "http"
            or scope["path"] != "/sample"
            or scope["method"] != "POST"
            or scope["query_string"]
            or self.lifecycle.draining
            or (self.api_key is not None and not authorized(scope, self.api_key))
        ):
            return False
        content_type = accept = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"accept":
                accept = value
            elif name == b"origin":
                return False
        return (
            content_type.split(b";")[0].strip().lower() == b"application/json"
            and 0 <= length <= MAX_FAST_BODY
            and not (b"application/json" in accept and b"image/png" not in accept)
        )

    async def _answer(
        self, scope: Scope, receive: Receive, request: SampleRequest
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The route's answer: status, headers and body (a PNG, or the error handlers' JSON)."""
        loop = asyncio.get_running_loop()
        REQUEST_DEADLINE.set(loop.time() + self.timeout_s)  # as the route's `start_deadline`
        try:
            async with asyncio.timeout(self.timeout_s):
                engine = self.fastapi_app.state.engine
                model = engine.current
                digits = request.digit_list
                check_digits(model, request.prior, digits)  # the route's 422 for undrawable ones
                seed = request.seed if request.seed is not None else secrets.randbits(63)
                _, images = await engine.sample(
                    model, request.n, seed, request.temperature, request.prior, digits
                )
                png = square_grid_png(images)
        except ServiceError as exc:
            handler = self.fastapi_app.exception_handlers[ServiceError]
            return _parts(await handler(Request(scope, receive), exc))
        except TimeoutError:
            return _parts(error_response(504, timeout_detail(self.timeout_s)))
        headers = [
            (b"content-type", b"image/png"),
            (b"content-length", str(len(png)).encode()),
            (b"x-seed", str(seed).encode()),
            (b"x-prior", sample_prior_name(model, request.prior, digits).encode()),
        ]
        return 200, headers, png


def _parts(response: Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return response.status_code, list(response.raw_headers), bytes(response.body)


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body (its Content-Length, at most `MAX_FAST_BODY`, was checked first)."""
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
