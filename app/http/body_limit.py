"""The one check of a request body's size: one 413, in JSON, before the app reads too much.

A body whose `Content-Length` is over the limit is refused before the app reads a byte of it; a
chunked one as soon as its count passes the limit, and the app then sees a disconnect. Either way
the answer closes the connection, so the rest of the body is never read. The Open Inference
Protocol's `/v2` routes take no uploads, so their limit is the largest valid infer request
(`protocol_max_bytes`), in their own error shape.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.error_bodies import error_response, speaks_protocol


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_upload_bytes: int,
        protocol_max_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.protocol_max_bytes = min(max_bytes, protocol_max_bytes or max_bytes)
        self.detail = (
            f"request body too large: at most {max_bytes} bytes "
            f"(uploads may be at most {max_upload_bytes} bytes each, VAE_MAX_UPLOAD_BYTES)"
        )
        self.protocol_detail = (
            f"request body too large: at most {self.protocol_max_bytes} bytes, a full batch "
            "as JSON (the binary tensor extension is about 8 times smaller)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.protocol_max_bytes if speaks_protocol(scope["path"]) else self.max_bytes
        length = content_length(scope)
        if length is not None and length > max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        refused = started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if not refused:
                started = True
                await send(message)

        await self.app(scope, counting_receive, send_unless_refused)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        detail = self.protocol_detail if speaks_protocol(path) else self.detail
        response = error_response(path, 413, detail, {"Connection": "close"})
        await response(scope, receive, send)


def content_length(scope: Scope) -> int | None:
    """The request's declared `Content-Length`, or None when absent or not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
