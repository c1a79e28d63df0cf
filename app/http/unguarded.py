"""Plain `uvicorn app.main:app`: what the app can still bound without `vae-serve`'s edge.

`vae-serve` runs uvicorn with the HTTP edge (`app.server.edge`): header size and count limits,
header and body timeouts, a connection cap that sheds half-open connections, and a drain with a
hard deadline on SIGTERM. Started as `uvicorn app.main:app`, the app has none of that, so it says
so once at start-up, and it bounds the one thing an ASGI app can: a request body that stops
arriving gets 408 after `VAE_BODY_TIMEOUT_S`, which also lets a SIGTERM finish.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.error_bodies import error_response

WITHOUT_EDGE = (
    "running without vae-serve's HTTP edge: no limit on header size or count, no header "
    "timeout, no connection cap, and no shutdown deadline (a slow client can hold SIGTERM "
    "open). Only stalled request bodies are bounded here (VAE_BODY_TIMEOUT_S). Start with "
    "`vae-serve` (or `python -m app.server.cli`); see docs/operations.md"
)


class BodyStallMiddleware:
    """A request body that sends nothing for `timeout_s`: 408, and the app sees a disconnect.

    Each read of the body waits at most `timeout_s` (progress resets it, as at the edge); once the
    body is complete, reads (which then wait for a disconnect) are not timed. Whatever the app
    answers to the disconnect is replaced by the 408.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.detail = f"request body stalled for {timeout_s:g} s (VAE_BODY_TIMEOUT_S)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = stalled = started = False

        async def timed_receive() -> Message:
            nonlocal body_done, stalled
            if body_done or stalled:
                return await receive() if not stalled else {"type": "http.disconnect"}
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                stalled = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if stalled and not started:
                return  # the app's answer to the disconnect (400, 500): the 408 below instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, send_tracking)
        except Exception:
            if not stalled or started:
                raise
        if stalled and not started:
            refusal = error_response(scope["path"], 408, self.detail, {"Connection": "close"})
            await refusal(scope, receive, send)
