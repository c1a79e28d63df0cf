"""`DirectRoute`: a route served without FastAPI's per-request machinery, for the hot paths.

FastAPI resolves each route's dependencies, wraps its call in an exit stack and an exception
layer, and serialises its answer on every request; on a route whose own work is a few hundred
microseconds, that machinery cost more than the work (`docs/benchmarks.md`, "What the speed-ups
are worth"). A direct route is still an `APIRoute`: matched, documented from its endpoint's
signature and wrapped by every middleware like the others, its errors rendered by the app's
exception handlers. It fills the endpoint's parameters itself, with the few kinds the hot paths
use: `request`, the path's parameters, one JSON body (a pydantic model) and query parameters
with defaults, each invalid one a `RequestValidationError` as FastAPI would raise it. No
dependency runs (the router's are documentation only), so the endpoint starts its own deadline.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


class DirectRoute(APIRoute):
    """An `APIRoute` whose endpoint is called as `endpoint(request, **path_params, **filled)`:
    `filled` holds the JSON body's model and the query parameters given (see the module doc)."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        first, *rest = inspect.signature(endpoint).parameters.values()
        hints = get_type_hints(endpoint, include_extras=True)
        self.body_parameter: tuple[str, type[BaseModel]] | None = None
        self.query_parameters: dict[str, TypeAdapter] = {}
        for parameter in rest:
            if parameter.name in self.param_convertors:
                continue
            hint = hints.get(parameter.name)
            if parameter.default is not parameter.empty:
                self.query_parameters[parameter.name] = TypeAdapter(hint)
            elif _is_model(hint) and self.body_parameter is None:
                self.body_parameter = (parameter.name, _bare(hint))
            else:
                raise TypeError(
                    f"{endpoint.__name__}: a direct route's endpoint takes `request`, the path's "
                    f"parameters {sorted(self.param_convertors)}, at most one JSON body model and "
                    f"query parameters with defaults; not {parameter.name!r}"
                )
        if first.name != "request":
            raise TypeError(f"{endpoint.__name__}: a direct route's endpoint takes `request` first")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # FastAPI's own 405
            return
        request = Request(scope, receive, send)
        filled: dict[str, Any] = scope.get("path_params", {})
        if self.query_parameters and scope["query_string"]:
            filled = {**filled, **self._queries(request)}
        if self.body_parameter is not None:
            name, model = self.body_parameter
            filled = {**filled, name: await _json_body(request, model)}
        response: Response = await self.endpoint(request, **filled)
        await response(scope, receive, send)

    def _queries(self, request: Request) -> dict[str, Any]:
        given = request.query_params
        values: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for name, adapter in self.query_parameters.items():
            if name in given:
                try:
                    values[name] = adapter.validate_python(given[name])
                except ValidationError as exc:
                    errors += _located(exc, "query", name)
        if errors:
            raise RequestValidationError(errors)
        return values


def add_direct_route(router: APIRouter, path: str, endpoint: Any, **documented: Any) -> None:
    """`endpoint` as a `DirectRoute` for `POST path` on `router` itself, the app's: an included
    router is matched twice a request (`docs/benchmarks.md`, "One of each"). `documented`: what
    OpenAPI says of it (tags, dependencies, responses, ...), as `add_api_route` takes it."""
    router.add_api_route(
        path, endpoint, methods=["POST"], route_class_override=DirectRoute, **documented
    )


async def _json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The body as `model`: parsed as JSON when its Content-Type says JSON (or says nothing), as
    FastAPI does; any other body fails the model's own validation, as it does there."""
    raw = await _read_body(request)
    if not raw:
        raise RequestValidationError([MISSING_BODY])
    try:
        if _says_json(request.headers.get("content-type")):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(_located(exc, "body"), body=raw) from None


async def _read_body(request: Request) -> bytes:
    """The whole body, from `receive` straight (a small JSON body is one message; Starlette's
    `Request.body` streams it through two generators): the endpoint gets the parsed model, so
    nothing reads it again."""
    message = await request.receive()
    chunks = [message.get("body", b"")]
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await request.receive()
        chunks.append(message.get("body", b""))
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return b"".join(chunks)


def _says_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _located(exc: ValidationError, *where: str) -> list[dict[str, Any]]:
    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_url=False)]


def _bare(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


def _is_model(hint: Any) -> bool:
    kind = _bare(hint)
    return isinstance(kind, type) and issubclass(kind, BaseModel)
