"""What the OpenAPI document says about responses the route functions do not declare themselves.

FastAPI only knows the JSON `response_model`; the PNG alternative and the error statuses (raised
as `app.errors` types, mapped in `app.http.error_bodies`) are described here once for every router.
"""

from __future__ import annotations

from typing import Any

from app.routes.responses import PNG

OpenApiResponses = dict[int | str, dict[str, Any]]

PNG_RESPONSE: OpenApiResponses = {
    200: {"content": {PNG: {"schema": {"type": "string", "format": "binary"}}}}
}
ERRORS: OpenApiResponses = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in (
        (401, "API key missing or wrong"),
        (413, "upload over the byte or pixel limits"),
        (415, "an image format we do not take"),
        (422, "invalid input"),
        (503, "queue full (Retry-After) or model not loaded"),
        (504, "inference timed out"),
    )
}
