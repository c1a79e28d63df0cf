"""What the OpenAPI document says about responses the route functions do not declare themselves.

FastAPI only knows the JSON `response_model`; the PNG alternative, the error statuses (raised as
`app.errors` types, mapped in `app.http.error_bodies`) and their bodies are described here once,
so that every route lists exactly the statuses it answers, each in the shape it is answered in
(`tests/api/test_schema_fuzz.py` holds the service to it with schemathesis). The guard's answers
(401 with a key, 503 while draining, 504 past the deadline) depend on how `app.main` mounts a
router, so they come from `guard_errors` there; everything else is declared on the route.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.routes.responses import PNG

OpenApiResponses = dict[int | str, dict[str, Any]]


class ErrorBody(BaseModel):
    """Every error of the service's own routes but a 422: what went wrong, in words."""

    detail: str


class FieldError(BaseModel):
    """One input that did not validate (pydantic's error, without the offending value)."""

    type: str
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str
    ctx: dict[str, str] | None = None


class InvalidInputBody(BaseModel):
    """A 422: the inputs that did not validate, or what is wrong with valid ones, in words."""

    detail: str | list[FieldError] = Field(
        description="a list when the body or a parameter does not validate against this "
        "document; a sentence when valid input cannot be served (a latent of the wrong length, "
        "an undecodable image, a digit the prior cannot draw, both or neither of two parameters)"
    )


class ProtocolErrorBody(BaseModel):
    """Every error under `/v2`, in the Open Inference Protocol's shape."""

    error: str


def png_alternative(headers: dict[str, Any] | None = None) -> OpenApiResponses:
    """A 200 that may be a PNG too (its JSON is the route's `response_model`), with `headers`."""
    response: dict[str, Any] = {
        "content": {PNG: {"schema": {"type": "string", "format": "binary"}}}
    }
    if headers:
        response["headers"] = headers
    return {200: response}


PNG_RESPONSE = png_alternative()

DESCRIPTIONS: dict[int, str] = {
    400: "the body is not the JSON or multipart form its Content-Type says",
    401: "API key missing or wrong",
    404: "no such bundled example",
    413: "body, upload or image over the limits",
    415: "an image format the service does not take",
    422: "invalid input",
    503: "busy, still loading or shutting down: retry after `Retry-After` seconds",
    504: "took longer than VAE_REQUEST_TIMEOUT_S",
}
PROTOCOL_DESCRIPTIONS: dict[int, str] = {
    400: "a request the protocol cannot take: bad JSON, an unknown tensor, a wrong shape, "
    "datatype or value",
    404: "no such model or version",
    413: "body larger than a full batch of this model could need",
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}, "required": True}},
    503: {
        "Retry-After": {
            "description": "seconds",
            "schema": {"type": "integer", "minimum": 0},
            "required": True,
        }
    },
}


def error(
    status: int, description: str | None = None, *, protocol: bool = False
) -> OpenApiResponses:
    """One error status, with its body (`{"error": ...}` under `/v2`) and its headers."""
    if protocol:
        model: type[BaseModel] = ProtocolErrorBody
        text = description or PROTOCOL_DESCRIPTIONS.get(status) or DESCRIPTIONS[status]
    else:
        model = InvalidInputBody if status == 422 else ErrorBody
        text = description or DESCRIPTIONS[status]
    response: dict[str, Any] = {"description": text, "model": model}
    if status in HEADERS:
        response["headers"] = HEADERS[status]
    return {status: response}


def errors(*statuses: int, protocol: bool = False) -> OpenApiResponses:
    """Several error statuses, each as `error` describes it."""
    return {
        code: doc for status in statuses for code, doc in error(status, protocol=protocol).items()
    }


def guard_errors(*, api_key: bool, deadline: bool, protocol: bool = False) -> OpenApiResponses:
    """What the guard answers on the routes it guards: 401 only with an API key on them, 503 while
    draining, 504 where the route starts the request deadline."""
    statuses = [401] if api_key else []
    statuses += [503, 504] if deadline else [503]
    return errors(*statuses, protocol=protocol)
