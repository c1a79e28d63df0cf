"""Latent space -> images: /sample, /decode and /interpolate."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from app import deadline
from app.errors import InvalidInput
from app.images.examples import ExampleStore
from app.images.upload import UPLOAD_DESCRIPTION, read_upload
from app.inference.engine import Engine, check_digits, sample_prior_name
from app.inference.served import LoadedModel
from app.routes.deps import (
    DecodeGateDep,
    EngineDep,
    ExamplesDep,
    FormatQuery,
    IncomingDep,
    JsonDep,
    ModelDep,
    PreprocessQuery,
    SettingsDep,
    engine_of,
    settings_of,
    to_model_input,
)
from app.routes.direct import add_direct_route
from app.routes.openapi import (
    PNG_RESPONSE,
    OpenApiResponses,
    error,
    errors,
    png_alternative,
)
from app.routes.responses import (
    asks_for_json,
    decode_response,
    encoded,
    interpolation_response,
    sample_response,
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

router = APIRouter(tags=["generate"])

JSON_BODY_ERRORS = errors(400, 413, 422)
SAMPLE_HEADERS = {
    "X-Seed": {
        "description": "the seed drawn with",
        "schema": {"type": "integer"},
        "required": True,
    },
    "X-Prior": {
        "description": "the prior drawn from",
        "schema": {"type": "string"},
        "required": True,
    },
}


def add_sample_route(
    router: APIRouter, dependencies: Sequence[Any], responses: OpenApiResponses
) -> None:
    """`/sample` on `router` itself, the app's: the hot path skips FastAPI's per-request machinery
    (a direct route) and an included router's second match (`docs/benchmarks.md`)."""
    add_direct_route(
        router,
        "/sample",
        sample,
        tags=["generate"],
        dependencies=dependencies,
        response_model=SampleResponse,
        responses={**responses, **png_alternative(SAMPLE_HEADERS), **JSON_BODY_ERRORS},
    )


async def sample(request: Request, body: SampleRequest, format: FormatQuery = None) -> Response:
    """Draws `n` digits from the checkpoint's prior (`"prior": "standard"`: N(0, I)), or the
    digits asked for with `digit` / `digits`. PNG: one grid. The seed is echoed in `X-Seed`.

    The hot route, so a direct route (`app.routes.direct`): it starts its own deadline."""
    deadline.start(request.scope, settings_of(request).request_timeout_s)
    engine = engine_of(request)
    m = engine.current  # pinned for the whole request, as `ModelDep` does
    as_json = asks_for_json(format, request.headers.get("accept", ""))
    digits = body.digit_list
    check_digits(m, body.prior, digits)
    # a seed is echoed to be reused, not to be secret: no system call for it (the loop's thread
    # would give the core to the inference thread at every request)
    seed = body.seed if body.seed is not None else random.getrandbits(63)
    z, images = await engine.sample(m, body.n, seed, body.temperature, body.prior, digits)
    prior = sample_prior_name(m, body.prior, digits)
    return await encoded(
        len(images), sample_response, seed, body.temperature, z, images, as_json, prior, digits
    )


@router.post(
    "/decode", response_model=DecodeResponse, responses={**PNG_RESPONSE, **JSON_BODY_ERRORS}
)
async def decode(body: DecodeRequest, engine: EngineDep, m: ModelDep, as_json: JsonDep) -> Response:
    """Latent(s) -> image(s). One `z` gives one 32x32 PNG, `zs` a grid."""
    images = await engine.decode(m, _latents(body.latents, m))
    return await encoded(len(images), decode_response, images, body.z is not None, as_json)


@router.post(
    "/interpolate",
    response_model=InterpolateResponse,
    responses={**PNG_RESPONSE, **JSON_BODY_ERRORS, **error(404)},
)
async def interpolate(
    body: InterpolateRequest,
    engine: EngineDep,
    m: ModelDep,
    examples: ExamplesDep,
    as_json: JsonDep,
) -> Response:
    """A strip from `start` to `end`, each a latent `z` or a bundled `example` id."""
    start, end = [await _endpoint_latent(e, engine, m, examples) for e in (body.start, body.end)]
    z, images = await engine.interpolate(m, start, end, body.steps)
    return await encoded(len(images), interpolation_response, z, images, as_json)


@router.post(
    "/interpolate/upload",
    response_model=InterpolateResponse,
    responses={**PNG_RESPONSE, **errors(400, 413, 415, 422)},
)
async def interpolate_uploads(
    start: Annotated[UploadFile, File(description=f"first image: {UPLOAD_DESCRIPTION}")],
    end: Annotated[UploadFile, File(description=f"last image: {UPLOAD_DESCRIPTION}")],
    engine: EngineDep,
    m: ModelDep,
    settings: SettingsDep,
    gate: DecodeGateDep,
    incoming: IncomingDep,
    as_json: JsonDep,
    steps: Annotated[int, Form(ge=2, le=MAX_STEPS)] = 10,
    preprocess: PreprocessQuery = "auto",
) -> Response:
    """A strip between the encodings (posterior means) of two uploaded images."""
    uploads = [await read_upload(f, settings.max_upload_bytes) for f in (start, end)]
    x = np.concatenate(
        [await to_model_input(d, settings, preprocess, gate, incoming) for d in uploads]
    )  # the first gives back what the request held while its body arrived
    mu, _ = await engine.encode(m, x)
    z, images = await engine.interpolate(m, mu[0], mu[1], steps)
    return await encoded(len(images), interpolation_response, z, images, as_json)


async def _endpoint_latent(
    end: Endpoint, engine: Engine, m: LoadedModel, examples: ExampleStore
) -> np.ndarray:
    if end.z is not None:
        return _latents([end.z], m)[0]
    mu, _ = await engine.encode(m, examples.get(end.example or "").tensor[None])
    return mu[0]


def _latents(rows: list[list[float]], m: LoadedModel) -> np.ndarray:
    bad = [len(r) for r in rows if len(r) != m.latent_dim]
    if bad:
        raise InvalidInput(f"latents must have {m.latent_dim} values; got {bad[0]}")
    return np.array(rows, dtype=np.float32)
