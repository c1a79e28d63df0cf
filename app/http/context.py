"""The ASGI middleware around every request: its id, its access-log line, its metrics.

Plain ASGI rather than BaseHTTPMiddleware, so it costs microseconds: it assigns the request id,
echoes it as `X-Request-ID`, times the request for Prometheus and writes one access-log line. It
is also the last resort for an unexpected exception, answered here while the id is still set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.error_bodies import internal_error
from app.http.logs import ACCESS_LOG
from app.http.request_id import REQUEST_ID, request_id_for

log = logging.getLogger("app")

# Set in a request's scope by the edge (`app.server.edge`) when its client went away before the
# answer began: the edge cancels the request's task, so no thread keeps decoding or sampling for
# nobody, and the request ends here with nginx's status for it, "client closed request".
CLIENT_GONE_KEY = "vae.client_gone"
REQUEST_TASK_KEY = "vae.request_task"  # the task running the request: what the edge cancels
CLIENT_CLOSED_REQUEST = 499

REQUESTS = Counter(
    "vae_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "vae_http_request_duration_seconds",
    "Time from request start to the last response byte",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class RequestContextMiddleware:
    """Request id in, `X-Request-ID` out, latency and status into Prometheus and the access log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[REQUEST_TASK_KEY] = asyncio.current_task()
        request_id = request_id_for(scope)
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            if started or not scope.get(CLIENT_GONE_KEY):
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # cancelled for this request only: its task ends normally
            status = CLIENT_CLOSED_REQUEST
        except Exception:
            # Starlette's own last-resort handler would run after the id is gone.
            log.exception("unhandled error")
            if started:
                raise
            await internal_error(scope["path"])(scope, receive, send_with_id)
        finally:
            record_request(scope, status, time.perf_counter() - start, request_id)
            REQUEST_ID.reset(token)


# Prometheus' `labels()` validates and locks on every call; the children are permanent.
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_request(scope: Scope, status: int, seconds: float, request_id: str) -> None:
    """A finished request into the metrics (under its route's template) and the access log."""
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    method = scope["method"]
    series = _SERIES.get((method, template, status))
    if series is None:
        series = _SERIES[(method, template, status)] = (
            REQUESTS.labels(method, template, str(status)),
            LATENCY.labels(method, template),
        )
    series[0].inc()
    series[1].observe(seconds)
    ACCESS_LOG.record(method, scope["path"], status, template, round(seconds * 1000, 2), request_id)
