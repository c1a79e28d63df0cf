"""Which requests are refused from their headers alone, before their body is read.

Under a flood, a refusal that first reads and parses a body (an upload of megabytes, a tensor)
costs the event loop what the admitted work needs. When light work fills the inference queue, or
image decoding could not leave time for the rest of the request's work, 503 with `Retry-After`
at once.
"""

from __future__ import annotations

from app.errors import Overloaded
from app.http.shedding import Check, Reserve
from app.inference.admission import REQUEST_KIND, DecodeGate, IncomingUpload
from app.inference.engine import Engine

INFERENCE_POSTS = frozenset(
    {"/sample", "/decode", "/interpolate", "/interpolate/upload", "/reconstruct", "/encode"}
)


def shedder(engine: Engine, decode_gate: DecodeGate, timeout_s: float) -> Check:
    """The check for the edge and the guard: an `Overloaded` to answer, or None to go on.

    A full light lane refuses every inference request, heavy ones included: the thread is then
    saturated with light work, and telling a heavy request so costs far less than reading it."""

    def refusal(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Overloaded | None:
        if not _is_inference_post(method, path):
            return None
        if engine.admission.light_full(timeout_s, path):
            return engine.admission.light_refusal()
        if _is_multipart(headers) and decode_gate.full(timeout_s):
            return decode_gate.refusal()
        return None

    return refusal


def reserver(decode_gate: DecodeGate) -> Reserve:
    """For the guard, in the request's task once it is admitted from its head: its kind for the
    light lane's estimates (`REQUEST_KIND`, which ends with the task), and for an upload a typical
    upload's place at the decode gate until its body reaches it, so the heads that arrive with it
    are weighed against it."""

    def reserve(
        method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> IncomingUpload | None:
        if not _is_inference_post(method, path):
            return None
        REQUEST_KIND.set(path)
        return decode_gate.incoming() if _is_multipart(headers) else None

    return reserve


def _is_inference_post(method: str, path: str) -> bool:
    return method == "POST" and (
        path in INFERENCE_POSTS or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


def _is_multipart(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value[:19].lower() == b"multipart/form-data"
    return False
