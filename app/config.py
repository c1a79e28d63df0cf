"""All service configuration, read once from `VAE_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DIGIT_GUIDE = "models/mnist-digit-guide.pt"  # a missing default file: guide off, logged
MAX_URL_BYTES = 65_535  # httptools' URL parser refuses longer URLs (the edge answers 414)
# What VAE_BACKEND may name: the runners of ONNX graphs in app/inference/backends/table.py, eager
# PyTorch ("torch") and "auto" (app/inference/backends/select.py)
BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16")


class Settings(BaseSettings):
    """Every knob of the service; `VAE_MAX_BATCH_SIZE=1` turns micro-batching off."""

    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore")

    checkpoint: Path = Path("models/mnist-vae.pt")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    fp16: bool = Field(False, description="half precision on CUDA (ignored on the CPU)")
    torch_threads: int = Field(
        0, ge=0, description="intra-op CPU threads for inference; 0: one core left for HTTP"
    )
    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]
        "auto",
        description="auto: ONNX Runtime on the CPU, PyTorch on CUDA; each checked against eager",
    )
    cuda_graphs: bool = Field(
        False, description="CUDA graphs per bucket on CUDA; off until `make gpu-check` proves them"
    )
    digit_guide: str = Field(
        DEFAULT_DIGIT_GUIDE,
        description="classifier that accepts chosen digits (models/digit_guide.py); '': off",
    )
    digit_candidates: int = Field(
        8, ge=1, le=64, description="latents a chosen digit may try before the best one is kept"
    )
    digit_threshold: float = Field(
        0.01,
        ge=0,
        le=1,
        description="is_digit = typicality >= this; 0.01 flags 1 % of real held-out digits",
    )
    refuse_non_digits: bool = Field(
        False, description="/reconstruct answers 422 (with the score) when is_digit is false"
    )

    max_batch_size: int = Field(64, ge=1, le=4096, description="rows per forward pass")
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="opt-in: how long a batch waits to fill; 0: never waits"
    )
    inline_lone_batches: Literal["auto", "on", "off"] = Field(
        "auto",
        description="a lone one-row batch runs on the event loop, not the inference thread; "
        "auto: when the process may use one core and the model is on the CPU",
    )
    upload_batch_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="how long an encode or reconstruct batch may wait for uploads still being "
        "decoded; 0: never",
    )
    slice_ms: float = Field(
        40.0,
        gt=0,
        le=10_000,
        description="inference work per turn of the inference thread (a batch, or a slice of a "
        "larger request), so a light request waits behind at most one slice of heavy work",
    )
    light_queue_ms: float = Field(
        40.0,
        gt=0,
        le=60_000,
        description="light requests (one slice or less) are refused with 503 once they would "
        "wait longer than this in their lane (booked work, stretched as learned), so they never "
        "wait long; two typical light jobs are always admitted, so the thread never waits for "
        "the next one",
    )
    queue_size: int = Field(2048, ge=1, description="queued requests before answering 503")
    request_timeout_s: float = Field(10.0, gt=0, description="per request, queue wait included")

    max_upload_bytes: int = Field(
        5 * 1024 * 1024, ge=1, description="bytes per uploaded file (and decoded ?image=)"
    )
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width x height per upload")

    # The HTTP edge (app/server/edge.py): what one client may cost before the app sees a request.
    max_header_bytes: int = Field(
        80 * 1024, ge=8 * 1024, description="request line plus headers; more gets 431 (or 414)"
    )
    max_headers: int = Field(100, ge=8, description="header fields per request; more gets 431")
    header_timeout_s: float = Field(
        10.0, gt=0, description="from connect (or the request's first byte) to its last header"
    )
    body_timeout_s: float = Field(
        15.0, gt=0, description="a request body that sends nothing for this long gets 408"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections close after")
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections per worker; past it, one with no request in progress is "
        "closed to make room, or the new one is answered 503",
    )
    max_connections_per_address: int = Field(
        0,
        ge=0,
        description="open connections per worker from one client address, handled as "
        "VAE_MAX_CONNECTIONS; 0: no such limit (behind a proxy every client shares its address)",
    )
    shutdown_grace_s: float = Field(
        20.0, gt=0, le=300, description="SIGTERM to exit, draining included, whatever clients do"
    )

    # Admission (app/admission.py): image decoding is bounded like inference.
    decode_concurrency: int = Field(2, ge=1, description="image decodes running at once")
    decode_pixel_budget: int = Field(
        2 * 4096 * 4096, ge=1, description="pixels being decoded at once, over all requests"
    )

    # /admin/reload loads only from here (default: the served checkpoint's folder).
    checkpoint_dir: Path | None = None

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log_sample: float = Field(
        1.0, ge=0, le=1, description="share of successful requests in the access log; errors: all"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    api_key: SecretStr | None = None
    admin_token: SecretStr | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accepts `a,b` as well as a JSON list, so the variable is easy to write by hand."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("api_key", "admin_token", mode="before")
    @classmethod
    def _no_blank_secrets(cls, value: object) -> object:
        """A blank key would silently turn auth off: refuse it (unset the variable instead)."""
        if isinstance(value, str) and (not value.strip() or value != value.strip()):
            raise ValueError("must not be empty or start or end with whitespace; unset it instead")
        return value

    @property
    def max_body_bytes(self) -> int:
        """A whole request body: two uploads (`/interpolate/upload`) plus multipart framing."""
        return 2 * self.max_upload_bytes + 64 * 1024

    @property
    def reload_dir(self) -> Path:
        """Where `/admin/reload` may load checkpoints from."""
        return self.checkpoint_dir or self.checkpoint.parent

    @field_validator("log_level", "backend", "inline_lone_batches", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def configuration_error(exc: ValidationError) -> str:
    """`VAE_NAME: reason` for the first invalid setting: one line for a start-up failure."""
    first = exc.errors()[0]
    name = "VAE_" + "_".join(str(part) for part in first["loc"]).upper()
    return f"{name}: {first['msg']}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, for code that runs outside any app (uvicorn's protocol in
    `app.server.edge`); routes get their app's settings through `app.routes.deps.SettingsDep`."""
    return Settings()
