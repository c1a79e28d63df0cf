"""`POST /sample`'s common request, answered without FastAPI's routing and dependency resolution.

The hot route's framework work (matching every route, resolving its dependencies, validating
the body, the exception layers) cost more event-loop time than the model itself. `FastSample` is
the innermost middleware, so the request context, the guard and the deadline are the same code for
it as for every route; it then calls the route's own `draw_sample` and the same error rendering.
Anything it does not take (a query string, an unusual body, an invalid one) goes on to the route
with the body replayed, so those answers stay the route's own. `docs/benchmarks.md` has its worth.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import deadline
from app.errors import ServiceError
from app.http.error_bodies import service_error_response
from app.routes.generate import draw_sample
from app.routes.responses import asks_for_json
from app.schemas import SampleRequest

MAX_FAST_BODY = 4096  # a SampleRequest is under 100 bytes; anything bigger takes the route


class FastSample:
    """ASGI middleware: answers the plain `POST /sample`, passes everything else on untouched."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.route = _find_route(fastapi_app.router.routes, "/sample")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = self._takes(scope)
        if accept is None:
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        try:
            request = SampleRequest.model_validate_json(body)
        except ValidationError:  # the route answers with its own 422
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = self.route  # metrics and the access log name the route
        state = self.fastapi_app.state
        deadline.start(scope, state.settings.request_timeout_s)
        try:
            engine = state.engine
            response = await draw_sample(
                request, engine, engine.current, asks_for_json(None, accept)
            )
        except ServiceError as exc:
            response = service_error_response(exc)
        await response(scope, receive, send)

    def _takes(self, scope: Scope) -> str | None:
        """The `Accept` header of a request this path takes (a JSON body of known small length,
        no query string), else None."""
        if (
            scope["type"] != "http"
            or scope["path"] != "/sample"
            or scope["method"] != "POST"
            or scope["query_string"]
        ):
            return None
        content_type = accept = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"accept":
                accept = value
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            return None
        return accept.decode("latin-1") if 0 <= length <= MAX_FAST_BODY else None


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
