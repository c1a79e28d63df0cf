"""Which requests are refused from their headers alone, before their body is read.

Under a flood, a refusal that first reads and parses a body (an upload of megabytes, a tensor)
costs the event loop what the admitted work needs. When every inference lane is full, or image
decoding could not start before the request's deadline, nothing in the body could change the
answer: 503 with `Retry-After` at once.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope

from app.errors import Overloaded
from app.inference.admission import DecodeGate, retry_after
from app.inference.engine import Engine

INFERENCE_POSTS = frozenset(
    {"/sample", "/decode", "/interpolate", "/interpolate/upload", "/reconstruct", "/encode"}
)

Shedder = Callable[[Scope], Overloaded | None]


def shedder(engine: Engine, decode_gate: DecodeGate, timeout_s: float) -> Shedder:
    """The guard's check (`app.http.guard`): an `Overloaded` to answer, or None to go on."""

    def refusal(scope: Scope) -> Overloaded | None:
        path = scope["path"]
        if scope["method"] != "POST" or not (
            path in INFERENCE_POSTS or (path.startswith("/v2/models/") and path.endswith("/infer"))
        ):
            return None
        if engine.admission.full(timeout_s):
            return Overloaded("every inference queue is full, retry shortly")
        if _is_multipart(scope):
            wait = decode_gate.expected_wait_s()
            if wait >= timeout_s:
                return Overloaded(
                    f"image decoding is busy (about {wait:.1f} s of work ahead), retry shortly",
                    retry_after=retry_after(wait - timeout_s),
                )
        return None

    return refusal


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value[:19].lower() == b"multipart/form-data"
    return False
