"""Images -> latent space: /reconstruct and /encode (query or upload)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response

from app.config import MAX_URL_BYTES
from app.errors import InvalidInput, NotADigit
from app.images.upload import decode_base64url
from app.inference.engine import Engine
from app.inference.served import LoadedModel
from app.routes.deps import (
    DecodeGateDep,
    EngineDep,
    ExamplesDep,
    JsonDep,
    ModelDep,
    PreprocessQuery,
    SettingsDep,
    UploadedImage,
    to_model_input,
)
from app.routes.openapi import PNG_RESPONSE, error, errors
from app.routes.responses import latent_response, reconstruction_response, verdict
from app.schemas import LatentResponse, ReconstructResponse

router = APIRouter(tags=["images"])

UPLOAD_ERRORS = errors(400, 413, 415, 422)


@router.post(
    "/reconstruct",
    response_model=ReconstructResponse,
    responses={**PNG_RESPONSE, **UPLOAD_ERRORS},
)
async def reconstruct(
    x: UploadedImage, engine: EngineDep, m: ModelDep, as_json: JsonDep, settings: SettingsDep
) -> Response:
    """PNG: what the model saw (left) beside its reconstruction (right); `X-Typicality` and
    `X-Is-Digit` say how digit-like it is. With `VAE_REFUSE_NON_DIGITS`, 422 when it is not."""
    mu, logvar, recon, neg_elbo, typicality = await engine.reconstruct_scored(m, x)
    digit = verdict(typicality, settings.digit_threshold)
    if settings.refuse_non_digits and digit.is_digit is False:
        raise NotADigit(
            f"This does not look like a digit: typicality {digit.typicality:.4f} is under "
            f"VAE_DIGIT_THRESHOLD {settings.digit_threshold:g} (less digit-like than "
            f"{100 * (1 - (digit.typicality or 0.0)):.2f} % of real digits).",
            digit.headers() or {},
        )
    return reconstruction_response(x, mu, logvar, recon, neg_elbo, as_json, digit)


@router.get(
    "/encode", response_model=LatentResponse, responses={**errors(413, 415, 422), **error(404)}
)
async def encode_query(
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    gate: DecodeGateDep,
    examples: ExamplesDep,
    image: Annotated[
        str | None,
        Query(
            description="the image file, base64url-encoded. The whole URL may be at most 65,535 "
            "bytes, so this carries files up to about 48 KB; upload larger ones with POST",
            max_length=MAX_URL_BYTES,
        ),
    ] = None,
    example: Annotated[
        str | None, Query(description="a bundled example id (GET /examples)", max_length=64)
    ] = None,
    preprocess: PreprocessQuery = "auto",
) -> Response:
    """The posterior q(z|x) of a small image passed in the query, or of a bundled example."""
    if (image is None) == (example is None):
        raise InvalidInput("give exactly one of ?image=<base64url> or ?example=<id>")
    if example is not None:
        x = examples.get(example).tensor[None]
    else:
        data = decode_base64url(image or "", settings.max_upload_bytes)
        x = await to_model_input(data, settings, preprocess, gate)
    return await _encode(engine, m, x, settings.digit_threshold)


@router.post("/encode", response_model=LatentResponse, responses=UPLOAD_ERRORS)
async def encode_upload(
    x: UploadedImage, engine: EngineDep, m: ModelDep, settings: SettingsDep
) -> Response:
    """The posterior q(z|x) of an uploaded image, and how digit-like the image is."""
    return await _encode(engine, m, x, settings.digit_threshold)


async def _encode(engine: Engine, m: LoadedModel, x: np.ndarray, threshold: float) -> Response:
    mu, logvar, typicality = await engine.encode_scored(m, x)
    return latent_response(mu, logvar, verdict(typicality, threshold))
