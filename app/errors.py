"""One exception hierarchy for the service; `app.main` maps it to JSON error responses in one place.

Each error carries the HTTP status it means, so a route never decides a status code itself.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code: int = 400

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code


class ImageError(ServiceError):
    """The upload is not a usable image: empty, truncated, unsupported or undecodable (422)."""

    status_code = 422


class UnsupportedImageFormat(ImageError):
    status_code = 415


class PayloadTooLarge(ServiceError):
    """Upload bytes or pixel count over the configured limits, refused before decoding (413)."""

    status_code = 413


class NotFound(ServiceError):
    status_code = 404


class Overloaded(ServiceError):
    """The inference queue is full; the client should retry after a moment (503 + Retry-After)."""

    status_code = 503

    def __init__(self, detail: str = "server busy, retry shortly", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InferenceTimeout(ServiceError):
    status_code = 504


class Unauthorized(ServiceError):
    status_code = 401


class InvalidInput(ServiceError):
    """Well-formed but unusable input, e.g. a latent of the wrong length (422)."""

    status_code = 422


class CheckpointRejected(ServiceError):
    """A reload asked for a checkpoint that cannot be served; the old model keeps serving (409)."""

    status_code = 409
