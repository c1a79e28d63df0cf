"""What every request passes before a route: the API key, the drain, and the request deadline.

Plain ASGI, inside the request context (so its refusals carry a request id and reach the metrics)
and inside CORS (so preflights stay open):

- With `VAE_API_KEY` set, every path but `OPEN_PATHS` needs `Authorization: Bearer <key>`, the
  docs, the web page and unknown paths included (a 401 says nothing about which routes exist).
  With `VAE_ADMIN_TOKEN` set, `/admin/...` needs that token instead, never the API key
  (`app.http.auth.required_key`): both travel in the same header.
- While the service drains (`app.http.lifecycle`), new work gets 503 with `Retry-After` and
  `Connection: close`; health, readiness and metrics still answer.
- Work that would be refused whatever its body says (`shed`, `app.routes.shedding`) gets 503 with
  `Retry-After` before its body is read; admitted work may hold a `reserve`ation (an upload's
  place at the decode gate) from then until it ends.
- Each request runs under an `asyncio.timeout` that waits until its deadline starts
  (`app.deadline.start`, once the body has arrived); past it, the request gets 504.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import deadline
from app.config import Settings
from app.http import shedding
from app.http.auth import authorized, bearer_value, required_key
from app.http.context import CLIENT_GONE_KEY
from app.http.error_bodies import error_response
from app.http.lifecycle import Lifecycle
from app.http.shedding import Check, Reserve

# Health, readiness (also the Open Inference Protocol's) and metrics: for probes and scrapers.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


class RequestGuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        lifecycle: Lifecycle,
        shed: Check | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self.app = app
        self.shed = shed
        self.reserve = reserve
        self.api_key = bearer_value(settings.api_key)
        self.admin_token = bearer_value(settings.admin_token)
        self.lifecycle = lifecycle
        self.timeout_s = settings.request_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        key, unauthorized = required_key(scope["path"], self.api_key, self.admin_token)
        if key is not None and not authorized(scope, key):
            headers = {"WWW-Authenticate": "Bearer"}
            refusal = error_response(path, 401, unauthorized, headers)
            await refusal(scope, receive, send)
            return
        if self.lifecycle.draining:
            headers = {"Retry-After": "1", "Connection": "close"}
            refusal = error_response(path, 503, "server is shutting down", headers)
            await refusal(scope, receive, send)
            return
        overloaded = self.shed and self.shed(scope["method"], scope["path"], scope["headers"])
        if overloaded:
            headers = {"Retry-After": str(overloaded.retry_after)}
            await error_response(path, 503, overloaded.detail, headers)(scope, receive, send)
            return
        reservation = self.reserve and self.reserve(scope["method"], path, scope["headers"])
        if reservation:
            scope[shedding.RESERVATION_KEY] = reservation
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 503:
                    _note_retry_after(scope, message)
            await send(message)

        try:
            async with asyncio.timeout(None) as timeout:
                scope[deadline.SCOPE_KEY] = timeout
                await self.app(scope, receive, send_tracking)
        except TimeoutError:
            if started:
                raise
            detail = deadline.timeout_detail(self.timeout_s)
            await error_response(path, 504, detail)(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the shutdown grace runs out (e.g. an
            # upload whose client went silent): answer it, rather than a traceback per request.
            if started or not self.lifecycle.draining or scope.get(CLIENT_GONE_KEY):
                raise
            detail = "server shut down before this request completed; retry"
            refusal = error_response(path, 503, detail, {"Connection": "close"})
            await refusal(scope, receive, send)
        finally:
            if reservation:
                reservation.release()


def _note_retry_after(scope: Scope, start: Message) -> None:
    """Tells the edge how long this connection was asked to wait (`shedding.RETRY_AFTER_KEY`)."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"retry-after" and value.isdigit():
            scope[shedding.RETRY_AFTER_KEY] = int(value)


async def start_deadline(request: Request) -> None:
    """A route dependency: the body has arrived by the time it runs, so the clock starts here."""
    deadline.start(request.scope, request.app.state.settings.request_timeout_s)
