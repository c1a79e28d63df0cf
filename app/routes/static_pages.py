"""The web page at `/`, and the answer for every request that no API route takes.

The page is mounted at `/`, so Starlette hands it each request whose method does not match,
which would give `HEAD /healthz` the page's 404. Here, only on that fallback path
(so routed requests pay nothing): `HEAD` runs the `GET` route without the body, a method that
an API route does not take gets 405 with `Allow`, and anything else not a GET or HEAD gets 404.
"""

from __future__ import annotations

from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount
from starlette.types import Message, Receive, Scope, Send

from app.http.error_bodies import error_response

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class StaticPages(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        router = scope["app"].router
        allowed = [m for m in METHODS if _api_route_takes(router, scope, m)]
        path = scope["path"]
        if scope["method"] == "HEAD" and "GET" in allowed:
            await router({**scope, "method": "GET"}, receive, _without_body(send))
        elif allowed and scope["method"] not in allowed:
            allow = ", ".join([*allowed, "HEAD"] if "GET" in allowed else allowed)
            detail = f"{scope['method']} is not allowed here; use {allow}"
            refusal = error_response(path, 405, detail, {"Allow": allow})
            await refusal(scope, receive, send)
        elif scope["method"] not in ("GET", "HEAD"):
            await error_response(path, 404, "Not Found")(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _api_route_takes(router, scope: Scope, method: str) -> bool:
    probe = {**scope, "method": method}
    return any(
        not isinstance(route, Mount) and route.matches(probe)[0] == Match.FULL
        for route in router.routes
    )


def _without_body(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return send_head
