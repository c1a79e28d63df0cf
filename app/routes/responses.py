"""Arrays into HTTP responses: the one place that encodes PNGs, grids, strips and JSON bodies.

Image routes answer PNG by default and JSON (base64 PNGs plus the numbers) on request; each
builder here takes the engine's arrays and the caller's choice and returns a finished
`Response`, so no route encodes an image or assembles a body by hand. Bodies are rendered straight
from the pydantic models: FastAPI would validate them once more on the way out.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from fastapi import Response
from pydantic import BaseModel

from app import tracing
from app.images import png
from app.schemas import (
    DecodeResponse,
    InterpolateResponse,
    LatentResponse,
    ReconstructResponse,
    SampleResponse,
)
from models.typicality import header_value

PNG = "image/png"
JSON = "application/json"
Headers = dict[str, str] | None
ENCODE_SPAN = "response.encode"  # each route's builder below runs in it when tracing is on


# More images than this are encoded on a worker thread: a grid of 256 digits is ~10 ms of zlib
# and base64 that would otherwise hold up every other request on the event loop.
OFF_LOOP_IMAGES = 32


async def encoded(images: int, build: Callable[..., Response], *args: Any) -> Response:
    """`build(*args)`, on a worker thread when it encodes more than `OFF_LOOP_IMAGES` images."""
    if images <= OFF_LOOP_IMAGES:
        return build(*args)
    return await asyncio.to_thread(build, *args)


def asks_for_json(format: str | None, accept: str) -> bool:
    """Content negotiation for image routes: `?format=` wins, else `Accept` (PNG by default)."""
    if format is not None:
        return format == "json"
    return "application/json" in accept and "image/png" not in accept


def png_response(png: bytes, headers: Headers = None) -> Response:
    """Ready-made PNG bytes (a bundled example, or one this module encoded)."""
    return Response(png, media_type=PNG, headers=headers)


def json_response(body: BaseModel, headers: Headers = None) -> Response:
    """`body` written by pydantic's own serializer, 10x `json.dumps` of its `model_dump`."""
    return Response(body.model_dump_json(), media_type=JSON, headers=headers)


def base64_png(image: np.ndarray) -> str:
    """One [1, H, W] image in [0, 1] as a base64 PNG, the JSON form of every image we return."""
    return base64.b64encode(png.to_png(image)).decode("ascii")


def base64_pngs(images: np.ndarray) -> list[str]:
    return [base64_png(image) for image in images]


def square_grid_png(images: np.ndarray) -> bytes:
    """Several images as one near-square grid PNG (one image: that image)."""
    return png.grid_png(images, nrow=max(1, math.ceil(math.sqrt(images.shape[0]))))


def grid_response(images: np.ndarray, headers: Headers = None) -> Response:
    return png_response(square_grid_png(images), headers)


@tracing.traced(ENCODE_SPAN)
def sample_response(
    seed: int,
    temperature: float,
    z: np.ndarray,
    images: np.ndarray,
    as_json: bool,
    prior: str = "standard",
    digits: list[int] | None = None,
) -> Response:
    """/sample: a grid PNG or the images with their latents; the seed in `X-Seed` and the prior
    in `X-Prior` either way."""
    headers = {"X-Seed": str(seed), "X-Prior": prior}
    if not as_json:
        return grid_response(images, headers)
    body = SampleResponse(
        seed=seed,
        temperature=temperature,
        prior=prior,
        digits=digits,
        images=base64_pngs(images),
        latents=z.tolist(),
    )
    return json_response(body, headers)


@tracing.traced(ENCODE_SPAN)
def decode_response(images: np.ndarray, one_latent: bool, as_json: bool) -> Response:
    """/decode: one latent gives one 32x32 PNG, several a grid; JSON lists every image."""
    if as_json:
        return json_response(DecodeResponse(images=base64_pngs(images)))
    if one_latent:
        return png_response(png.to_png(images[0]))
    return grid_response(images)


@tracing.traced(ENCODE_SPAN)
def interpolation_response(z: np.ndarray, images: np.ndarray, as_json: bool) -> Response:
    """/interpolate: the images as one strip PNG, or with the latents they were decoded from."""
    if not as_json:
        return png_response(png.strip_png(images))
    body = InterpolateResponse(steps=len(z), images=base64_pngs(images), latents=z.tolist())
    return json_response(body)


class Verdict(NamedTuple):
    """One upload's "is this a digit?": its typicality and whether that passes the threshold;
    both None for a model without a typicality calibration."""

    typicality: float | None
    is_digit: bool | None

    def headers(self) -> Headers:
        """`X-Typicality` and `X-Is-Digit` (none without a score)."""
        if self.typicality is None:
            return None
        return {
            "X-Typicality": header_value(self.typicality),
            "X-Is-Digit": "true" if self.is_digit else "false",
        }


NO_VERDICT = Verdict(None, None)


def verdict(typicality: np.ndarray | None, threshold: float) -> Verdict:
    """The first row's verdict (uploads are one image)."""
    if typicality is None:
        return NO_VERDICT
    value = float(typicality[0])
    return Verdict(value, value >= threshold)


@tracing.traced(ENCODE_SPAN)
def reconstruction_response(
    x: np.ndarray,
    mu: np.ndarray,
    logvar: np.ndarray,
    recon: np.ndarray,
    neg_elbo: np.ndarray,
    as_json: bool,
    digit: Verdict = NO_VERDICT,
) -> Response:
    """/reconstruct of one image: what the model saw beside its reconstruction, or the numbers;
    the typicality in `X-Typicality` and `X-Is-Digit` either way, when the model has one."""
    if not as_json:
        return png_response(png.strip_png(np.concatenate([x, recon])), digit.headers())
    body = ReconstructResponse(
        input=base64_png(x[0]),
        reconstruction=base64_png(recon[0]),
        mu=mu[0].tolist(),
        logvar=logvar[0].tolist(),
        neg_elbo=float(neg_elbo[0]),
        typicality=digit.typicality,
        is_digit=digit.is_digit,
    )
    return json_response(body, digit.headers())


@tracing.traced(ENCODE_SPAN)
def latent_response(mu: np.ndarray, logvar: np.ndarray, digit: Verdict = NO_VERDICT) -> Response:
    """/encode of one image: the posterior's mean and log-variance, and its typicality."""
    body = LatentResponse(
        latent_dim=mu.shape[1],
        mu=mu[0].tolist(),
        logvar=logvar[0].tolist(),
        typicality=digit.typicality,
        is_digit=digit.is_digit,
    )
    return json_response(body, digit.headers())
