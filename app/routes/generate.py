"""Latent space -> images: /sample, /decode and /interpolate."""

from __future__ import annotations

import secrets
from typing import Annotated

import torch
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from app import imaging
from app.deps import EngineDep, JsonDep, ModelDep, SettingsDep
from app.engine import Engine, LoadedModel
from app.errors import InvalidInput
from app.examples import ExampleStore
from app.routes.common import (
    ERRORS,
    PNG_RESPONSE,
    Preprocess,
    b64,
    grid_columns,
    normalize,
    png_response,
    read_upload,
)
from app.schemas import (
    MAX_STEPS,
    DecodeRequest,
    DecodeResponse,
    Endpoint,
    InterpolateRequest,
    InterpolateResponse,
    SampleRequest,
    SampleResponse,
)

router = APIRouter(tags=["generate"], responses=ERRORS)


@router.post("/sample", response_model=SampleResponse, responses=PNG_RESPONSE)
async def sample(body: SampleRequest, engine: EngineDep, m: ModelDep, as_json: JsonDep):
    """Draws `n` digits from the prior. PNG: one grid. The seed is echoed in `X-Seed`."""
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    z, images = await engine.sample(m, body.n, seed, body.temperature)
    headers = {"X-Seed": str(seed)}
    if not as_json:
        return png_response(imaging.grid_png(images, nrow=grid_columns(body.n)), headers)
    return _json(
        SampleResponse(
            seed=seed,
            temperature=body.temperature,
            images=[b64(imaging.to_png(i)) for i in images],
            latents=z.tolist(),
        ),
        headers,
    )


@router.post("/decode", response_model=DecodeResponse, responses=PNG_RESPONSE)
async def decode(body: DecodeRequest, engine: EngineDep, m: ModelDep, as_json: JsonDep):
    """Latent(s) -> image(s). One `z` gives one 32x32 PNG, `zs` a grid."""
    z = _latents(body.latents, m)
    images = await engine.decode(m, z)
    if as_json:
        return DecodeResponse(images=[b64(imaging.to_png(i)) for i in images])
    if body.z is not None:
        return png_response(imaging.to_png(images[0]))
    return png_response(imaging.grid_png(images, nrow=grid_columns(len(images))))


@router.post("/interpolate", response_model=InterpolateResponse, responses=PNG_RESPONSE)
async def interpolate(
    body: InterpolateRequest, request: Request, engine: EngineDep, m: ModelDep, as_json: JsonDep
):
    """A strip from `start` to `end`, each a latent `z` or a bundled `example` id."""
    examples: ExampleStore = request.app.state.examples
    ends = [await _endpoint_latent(e, engine, m, examples) for e in (body.start, body.end)]
    return await _strip(engine, m, ends[0], ends[1], body.steps, as_json)


@router.post("/interpolate/upload", response_model=InterpolateResponse, responses=PNG_RESPONSE)
async def interpolate_uploads(
    start: Annotated[UploadFile, File(description="first image")],
    end: Annotated[UploadFile, File(description="last image")],
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    as_json: JsonDep,
    steps: Annotated[int, Form(ge=2, le=MAX_STEPS)] = 10,
    preprocess: Annotated[Preprocess, Query()] = "auto",
):
    """A strip between the encodings (posterior means) of two uploaded images."""
    uploads = [await read_upload(f, settings) for f in (start, end)]
    x = torch.cat([await normalize(data, settings, preprocess) for data in uploads])
    mu, _ = await engine.encode(m, x)
    return await _strip(engine, m, mu[0], mu[1], steps, as_json)


async def _strip(
    engine: Engine, m: LoadedModel, a: torch.Tensor, b: torch.Tensor, steps: int, as_json: bool
):
    weights = torch.linspace(0.0, 1.0, steps).unsqueeze(1)
    z = torch.lerp(a.unsqueeze(0), b.unsqueeze(0), weights)
    images = await engine.decode(m, z)
    if not as_json:
        return png_response(imaging.strip_png(images))
    return InterpolateResponse(
        steps=steps, images=[b64(imaging.to_png(i)) for i in images], latents=z.tolist()
    )


async def _endpoint_latent(
    end: Endpoint, engine: Engine, m: LoadedModel, examples: ExampleStore
) -> torch.Tensor:
    if end.z is not None:
        return _latents([end.z], m)[0]
    mu, _ = await engine.encode(m, examples.get(end.example or "").tensor.unsqueeze(0))
    return mu[0]


def _latents(rows: list[list[float]], m: LoadedModel) -> torch.Tensor:
    bad = [len(r) for r in rows if len(r) != m.latent_dim]
    if bad:
        raise InvalidInput(f"latents must have {m.latent_dim} values; got {bad[0]}")
    return torch.tensor(rows, dtype=torch.float32)


def _json(model: SampleResponse, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), headers=headers)
