"""Every error the service answers with, each type bound to its HTTP status right here.

Nothing else picks a status code: the engine, the routes and the image decoder raise these types,
and `app.http.error_bodies` turns any of them into a JSON body in one place. A 500 never carries an
exception's text (it may hold paths or data); the log line with the same request id does.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base type; `status_code` is the HTTP status, fixed per subclass by `status=`."""

    status_code: int = 400

    def __init_subclass__(cls, *, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status_code = status

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadInferenceRequest(ServiceError, status=400):
    """An Open Inference Protocol request the protocol cannot take: bad JSON, an unknown tensor,
    a wrong shape or datatype. The protocol asks for 400 here, where the service's own routes
    answer 422."""


class Unauthorized(ServiceError, status=401):
    """The API key or the admin token is missing or wrong."""


class ReloadPathRefused(ServiceError, status=403):
    """A reload path outside the checkpoint directory (or a link out of it)."""


class NotFound(ServiceError, status=404):
    """No such bundled example (or other named resource)."""


class CheckpointRejected(ServiceError, status=409):
    """A reload asked for a checkpoint that cannot be served; the old model keeps serving."""


class PayloadTooLarge(ServiceError, status=413):
    """Upload bytes or pixel count over the configured limits, refused before decoding."""


class ImageError(ServiceError, status=422):
    """The upload is not a usable image: empty, truncated or undecodable."""


class UnsupportedImageFormat(ImageError, status=415):
    """A real image, but in a format the service does not take."""


class InvalidInput(ServiceError, status=422):
    """Well-formed but unusable input, e.g. a latent of the wrong length."""


class NotADigit(InvalidInput, status=422):
    """`VAE_REFUSE_NON_DIGITS`: the upload's typicality is under `VAE_DIGIT_THRESHOLD`; the score
    rides along in the message and in the `X-Typicality` and `X-Is-Digit` headers."""

    def __init__(self, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.headers = headers


class InferenceFailed(ServiceError, status=500):
    """A forward pass raised; its callers get this, the batcher carries on, the log has why."""

    def __init__(self, detail: str = "inference failed") -> None:
        super().__init__(detail)


class Overloaded(ServiceError, status=503):
    """The inference queue is full; the client should retry after a moment (Retry-After)."""

    def __init__(self, detail: str = "server busy, retry shortly", retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class NotReady(ServiceError, status=503):
    """No model is loaded yet (start-up is still loading and warming it)."""

    def __init__(self, detail: str = "model is not loaded yet") -> None:
        super().__init__(detail)


class ShuttingDown(ServiceError, status=503):
    """The server stopped while the request was still queued."""

    def __init__(self, detail: str = "server is shutting down") -> None:
        super().__init__(detail)
