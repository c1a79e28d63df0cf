"""Images -> latent space: /reconstruct and /encode (query or upload)."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, File, Query, Request, UploadFile

from app import imaging
from app.deps import EngineDep, JsonDep, ModelDep, SettingsDep
from app.errors import InvalidInput
from app.routes.common import (
    ERRORS,
    PNG_RESPONSE,
    Preprocess,
    b64,
    decode_base64url,
    normalize,
    png_response,
    read_upload,
)
from app.schemas import LatentResponse, ReconstructResponse

router = APIRouter(tags=["images"], responses=ERRORS)

PreprocessQuery = Annotated[
    Preprocess, Query(description="`none` skips MNIST normalisation for MNIST-like inputs")
]


@router.post("/reconstruct", response_model=ReconstructResponse, responses=PNG_RESPONSE)
async def reconstruct(
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP, GIF or TIFF, <= 5 MB")],
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    as_json: JsonDep,
    preprocess: PreprocessQuery = "auto",
):
    """PNG: what the model saw (left) beside its reconstruction (right)."""
    x = await normalize(await read_upload(file, settings), settings, preprocess)
    mu, logvar, recon, neg_elbo = await engine.reconstruct(m, x)
    if not as_json:
        return png_response(imaging.strip_png(torch.cat([x, recon])))
    return ReconstructResponse(
        input=b64(imaging.to_png(x[0])),
        reconstruction=b64(imaging.to_png(recon[0])),
        mu=mu[0].tolist(),
        logvar=logvar[0].tolist(),
        neg_elbo=float(neg_elbo[0]),
    )


@router.get("/encode", response_model=LatentResponse)
async def encode_query(
    request: Request,
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    image: Annotated[
        str | None, Query(description="the image file, base64url-encoded", max_length=7_000_000)
    ] = None,
    example: Annotated[
        str | None, Query(description="a bundled example id (GET /examples)", max_length=64)
    ] = None,
    preprocess: PreprocessQuery = "auto",
) -> LatentResponse:
    """The posterior q(z|x) of a small image passed in the query, or of a bundled example."""
    if (image is None) == (example is None):
        raise InvalidInput("give exactly one of ?image=<base64url> or ?example=<id>")
    if example is not None:
        x = request.app.state.examples.get(example).tensor.unsqueeze(0)
    else:
        data = decode_base64url(image or "", settings.max_upload_bytes)
        x = await normalize(data, settings, preprocess)
    return await _encode(engine, m, x)


@router.post("/encode", response_model=LatentResponse)
async def encode_upload(
    file: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP, GIF or TIFF, <= 5 MB")],
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    preprocess: PreprocessQuery = "auto",
) -> LatentResponse:
    """The posterior q(z|x) of an uploaded image."""
    x = await normalize(await read_upload(file, settings), settings, preprocess)
    return await _encode(engine, m, x)


async def _encode(engine, m, x: torch.Tensor) -> LatentResponse:
    mu, logvar = await engine.encode(m, x)
    return LatentResponse(latent_dim=m.latent_dim, mu=mu[0].tolist(), logvar=logvar[0].tolist())
