"""The server span of every request, added by `create_app` only when tracing is on.

Our own ASGI middleware rather than FastAPI's telemetry hook: it sits just inside the request
context, so it has the request id, and it names the span after `scope["route"]`, which routing
sets. FastAPI's hook stays off: it asks the providers
whether it is on for every request and adds spans for dependency resolution we do not need.
"""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import tracing
from app.http.request_id import REQUEST_ID

REQUEST_ID_ATTRIBUTE = "vae.request_id"  # the X-Request-ID the response carries


class ServerSpanMiddleware:
    """One SERVER span per HTTP request, a child of the caller's `traceparent` when it sent
    one, with the route template, the status and the request id (semantic conventions' names)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = tracing.tracer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = tracing.context_from_headers(scope["headers"])
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                REQUEST_ID_ATTRIBUTE: REQUEST_ID.get(),
            },
        )
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send_with_status)
        except Exception as exc:  # the request context answers it with a 500
            span.record_exception(exc)
            raise
        finally:
            context.detach(token)
            template = getattr(scope.get("route"), "path", None)
            if template is not None:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            span.end()
