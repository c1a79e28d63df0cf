"""What every request passes before a route: the API key, the drain, and the request deadline.

`RequestGuardMiddleware` is plain ASGI and sits inside CORS (so preflights stay open) and inside
`RequestContextMiddleware` (so its refusals carry a request id and reach the metrics):

- With `VAE_API_KEY` set, every path but `OPEN_PATHS` needs `Authorization: Bearer <key>`:
  the API, `/docs`, `/redoc`, `/openapi.json`, the web page, even unknown paths (a 401 says
  nothing about which routes exist). A 401 carries `WWW-Authenticate: Bearer`.
- While the service drains (`app.lifecycle`), new work gets 503 with `Retry-After` and
  `Connection: close`; health, readiness and metrics still answer.
- Each request gets an `asyncio.timeout` that does nothing until a route starts its deadline
  (`start_deadline`, a dependency, so it runs after the body has arrived); from then on decoding,
  queueing and inference all count against `VAE_REQUEST_TIMEOUT_S`, and a request past it gets 504.
"""

from __future__ import annotations

import asyncio
import hmac
from contextvars import ContextVar

from fastapi import Request
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.error_responses import error_response, speaks_protocol
from app.lifecycle import Lifecycle

# Health, readiness (also the Open Inference Protocol's) and metrics: for probes and scrapers.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
DEADLINE_KEY = "vae.deadline"
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("request_deadline", default=None)
UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <VAE_API_KEY>)"


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, lifecycle: Lifecycle) -> None:
        self.app = app
        self.api_key = bearer_value(settings.api_key)
        self.lifecycle = lifecycle
        self.timeout_s = settings.request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        protocol = speaks_protocol(scope["path"])  # /v2 errors read {"error": ...}
        if self.api_key is not None and not authorized(scope, self.api_key):
            headers = {"WWW-Authenticate": "Bearer"}
            refusal = error_response(401, UNAUTHORIZED, headers, protocol=protocol)
            await refusal(scope, receive, send)
            return
        if self.lifecycle.draining:
            headers = {"Retry-After": "1", "Connection": "close"}
            refusal = error_response(503, "server is shutting down", headers, protocol=protocol)
            await refusal(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(None) as deadline:
                scope[DEADLINE_KEY] = deadline
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if started:
                raise
            detail = timeout_detail(self.timeout_s)
            await error_response(504, detail, protocol=protocol)(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the shutdown grace runs out (e.g. an
            # upload whose client went silent): answer it, rather than a traceback per request.
            if started or not self.lifecycle.draining:
                raise
            detail = "server shut down before this request completed; retry"
            refusal = error_response(503, detail, {"Connection": "close"}, protocol=protocol)
            await refusal(scope, receive, send)


async def start_deadline(request: Request) -> None:
    """Starts this request's `VAE_REQUEST_TIMEOUT_S` clock (a route dependency: the body has
    arrived by the time it runs, so a slow upload is the body timeout's business, not this)."""
    timeout_s: float = request.app.state.settings.request_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout_s
    REQUEST_DEADLINE.set(deadline)
    scope_timeout = request.scope.get(DEADLINE_KEY)
    if scope_timeout is not None:
        scope_timeout.reschedule(deadline)


def timeout_detail(timeout_s: float) -> str:
    return f"request took longer than {timeout_s:g} s (VAE_REQUEST_TIMEOUT_S)"


def time_left_s(default: float) -> float:
    """Seconds until this request's deadline, or `default` outside a request with one."""
    deadline = REQUEST_DEADLINE.get()
    if deadline is None:
        return default
    return deadline - asyncio.get_running_loop().time()


def bearer_value(secret: SecretStr | None) -> bytes | None:
    return secret.get_secret_value().encode() if secret is not None else None


def authorized(scope: Scope, key: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)
    return False
