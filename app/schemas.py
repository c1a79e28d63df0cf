"""Request and response models: the API's contract, with the examples shown at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SAMPLES = 256
MAX_STEPS = 64
MAX_LATENT_DIM = 4096
LATENT_BOUND = 1000.0

Latent = Annotated[float, Field(allow_inf_nan=False, ge=-LATENT_BOUND, le=LATENT_BOUND)]
LatentVector = Annotated[list[Latent], Field(min_length=1, max_length=MAX_LATENT_DIM)]
B64Png = Annotated[str, Field(description="a PNG file, base64-encoded")]
JsonSchema = dict[str, Any]


def _given(name: str) -> JsonSchema:
    """The JSON schema of "`name` is there and not null", what `is not None` means to a model."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def exactly_one_of(*names: str) -> JsonSchema:
    """A model validator's "give exactly one of", in the model's JSON schema (so in OpenAPI)."""
    return {"oneOf": [_given(name) for name in names]}


def at_most_one_of(*names: str) -> JsonSchema:
    """A model validator's "give at most one of", in the model's JSON schema."""
    return {"not": {"allOf": [_given(name) for name in names]}}


class _Strict(BaseModel):
    """Request bodies: unknown fields are errors, and so are wrong JSON types (`{"n": true}` or
    `{"n": "16"}` is a 422, not 1 or 16); an integer is still a valid float."""

    model_config = ConfigDict(extra="forbid", strict=True)


# strict: `true` and "7" are not digits (lax pydantic would read them as 1 and 7).
Digit = Annotated[int, Field(strict=True, ge=0, le=9)]


class SampleRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"n": 16, "seed": 42, "temperature": 1.0},
                {"n": 8, "seed": 42, "digit": 7},
                {"digits": [2, 0, 2, 6], "seed": 1},
                {"n": 16, "seed": 42, "prior": "standard"},
            ],
            **at_most_one_of("digit", "digits"),
        },
    )

    n: int = Field(
        16, ge=1, le=MAX_SAMPLES, description="how many digits (default: len(digits), else 16)"
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="same seed, same bytes; omitted: the server picks"
    )
    temperature: float = Field(
        1.0, gt=0, le=3, allow_inf_nan=False, description="scales the prior's standard deviation"
    )
    prior: Literal["checkpoint", "standard"] = Field(
        "checkpoint",
        description="the checkpoint's own prior (see /model), or N(0, I) as the VAE was trained",
    )
    digit: Digit | None = Field(None, description="draw only this digit (all n images)")
    digits: Annotated[list[Digit], Field(min_length=1, max_length=MAX_SAMPLES)] | None = Field(
        None, description="one digit per image, in order; n defaults to its length"
    )

    @model_validator(mode="after")
    def _digits_fit_n(self) -> Self:
        if self.digit is not None and self.digits is not None:
            raise ValueError("give at most one of 'digit' or 'digits'")
        if self.digits is not None:
            if "n" not in self.model_fields_set:
                self.n = len(self.digits)
            elif len(self.digits) != self.n:
                raise ValueError(
                    f"'digits' has {len(self.digits)} entries but n is {self.n}: "
                    "give one digit per image"
                )
        return self

    @property
    def digit_list(self) -> list[int] | None:
        """The digit of every image, or None for a plain draw from the prior."""
        if self.digit is not None:
            return [self.digit] * self.n
        return self.digits


class SampleResponse(BaseModel):
    seed: int
    temperature: float
    prior: str = Field(description='"mixture" (the checkpoint\'s learned prior) or "standard"')
    digits: list[int] | None = Field(description="the digit each image was drawn for, if asked")
    images: list[B64Png]
    latents: list[list[float]]


TYPICALITY_DESCRIPTION = (
    "how digit-like the image the model saw is, in [0, 1]: the fraction of real held-out MNIST "
    "digits that look less digit-like by the same score (a typical digit is near 0.5; 0.01 is "
    "less digit-like than 99 % of them). null: the checkpoint has no typicality calibration"
)
IS_DIGIT_DESCRIPTION = "typicality >= VAE_DIGIT_THRESHOLD (default 0.01); null without a score"


class LatentResponse(BaseModel):
    latent_dim: int
    mu: list[float]
    logvar: list[float]
    typicality: float | None = Field(None, description=TYPICALITY_DESCRIPTION)
    is_digit: bool | None = Field(None, description=IS_DIGIT_DESCRIPTION)


class ReconstructResponse(BaseModel):
    input: B64Png = Field(description="the normalised 32x32 image the model saw")
    reconstruction: B64Png = Field(description="the decoder's mean at z = mu")
    mu: list[float]
    logvar: list[float]
    neg_elbo: float = Field(
        description="-log p(x|z=mu) + KL(q(z|x) || p(z)) in nats over the 784 real pixels"
    )
    typicality: float | None = Field(None, description=TYPICALITY_DESCRIPTION)
    is_digit: bool | None = Field(None, description=IS_DIGIT_DESCRIPTION)


class DecodeRequest(_Strict):
    """Exactly one of `z` (one latent) or `zs` (several)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"z": [0.0] * 32}, {"zs": [[0.0] * 32, [0.5] * 32]}],
            **exactly_one_of("z", "zs"),
        },
    )

    z: LatentVector | None = None
    zs: Annotated[list[LatentVector], Field(min_length=1, max_length=MAX_SAMPLES)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.z is None) == (self.zs is None):
            raise ValueError("give exactly one of 'z' or 'zs'")
        return self

    @property
    def latents(self) -> list[list[float]]:
        return [self.z] if self.z is not None else list(self.zs or [])


class DecodeResponse(BaseModel):
    images: list[B64Png]


class Endpoint(_Strict):
    """One end of an interpolation: a latent vector or a bundled example id."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of("z", "example"))

    z: LatentVector | None = None
    example: str | None = Field(None, max_length=64, examples=["3-0"])

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.z is None) == (self.example is None):
            raise ValueError("give exactly one of 'z' or 'example'")
        return self


class InterpolateRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"start": {"example": "3-0"}, "end": {"example": "8-0"}, "steps": 10}]
        },
    )

    start: Endpoint
    end: Endpoint
    steps: int = Field(10, ge=2, le=MAX_STEPS, description="images in the strip, ends included")


class InterpolateResponse(BaseModel):
    steps: int
    images: list[B64Png]
    latents: list[list[float]]


class Example(BaseModel):
    id: str
    label: int
    url: str


class ExamplesResponse(BaseModel):
    examples: list[Example]


class BackendResponse(BaseModel):
    """Where the forward passes run, and how close that is to eager PyTorch."""

    requested: str = Field(description="VAE_BACKEND: auto, torch, onnxruntime, openvino, ...")
    name: str = Field(description="what serves: torch, torch+cuda-graphs, onnxruntime, ...")
    precision: str = Field(description="f32, f16 or bf16")
    max_error: float | None = Field(
        description="largest difference from eager PyTorch on the load-time check "
        "(absolute, relative above 1); null for eager itself"
    )
    bound: float | None = Field(description="the most `max_error` may be for it to serve")
    fallback_reason: str | None = Field(
        description="why the requested backend is not serving (eager torch serves instead)"
    )


class ArtifactResponse(BaseModel):
    kind: str = Field(description="torch-checkpoint, or onnx-export (vae-export's manifest)")
    path: str
    sha256: str = Field(description="of the file named by `path` (an export's manifest)")
    runtime: str = Field(description="what runs it: torch or onnxruntime, with its version")


class ModelResponse(BaseModel):
    checkpoint: str
    sha256: str = Field(description="of the torch checkpoint the weights come from")
    preset: str | None
    latent_dim: int
    config: dict[str, Any]
    device: str
    dtype: str
    artifact: ArtifactResponse
    backend: BackendResponse
    batching: dict[str, Any] = Field(
        description="how requests share forward passes: max_batch_size, max_wait_ms, "
        "upload_batch_wait_ms, and inline_lone_batches (whether a lone row runs on the event "
        "loop, as `VAE_INLINE_LONE_BATCHES` resolved for this process)"
    )
    prior: dict[str, Any] = Field(
        description="the prior /sample draws from by default: N(0, I) or a learned mixture"
    )
    typicality: dict[str, Any] | None = Field(
        None,
        description='the "is this a digit?" score\'s calibration and VAE_DIGIT_THRESHOLD; null '
        "for a checkpoint calibrated before it existed (then uploads carry no score)",
    )
    metrics: dict[str, Any] = Field(description="the checkpoint's final evaluation")
    training: dict[str, Any] = Field(description="everything else the checkpoint records")
    versions: dict[str, str]
    loaded_at: str


class Status(BaseModel):
    status: str


class ReloadRequest(_Strict):
    checkpoint: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^[^\x00]*$",  # no OS takes a NUL in a path: refuse it here, not as a 500
        description="a file in VAE_CHECKPOINT_DIR, by name or absolute path; default: the "
        "configured checkpoint",
    )
