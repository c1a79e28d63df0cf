"""Uploaded images into model inputs: size checks first, then decoding off the event loop.

Every limit is `Settings.max_upload_bytes` / `max_image_pixels` (`VAE_MAX_UPLOAD_BYTES`,
`VAE_MAX_IMAGE_PIXELS`), checked before the bytes are read or decoded, so an oversized upload
costs neither memory nor CPU.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal

import torch
from fastapi import Query, UploadFile

from app import imaging
from app.admission import DecodeGate, image_pixels
from app.config import Settings
from app.errors import PayloadTooLarge
from app.guard import time_left_s

Preprocess = Literal["auto", "none"]
PreprocessQuery = Annotated[
    Preprocess, Query(description="`none` skips MNIST normalisation for MNIST-like inputs")
]
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
UPLOAD_DESCRIPTION = f"{FORMATS}; at most `VAE_MAX_UPLOAD_BYTES` (see the API description)"


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """Refuses an oversized file from its recorded size before reading it into memory."""
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"The upload is {file.size} bytes, over the limit of {settings.max_upload_bytes} bytes."
        )
    return await file.read()


def decode_base64url(text: str, settings: Settings) -> bytes:
    """`?image=` carries the file as base64url; the length is checked before anything decodes."""
    max_bytes = settings.max_upload_bytes
    if len(text) > math.ceil(max_bytes / 3) * 4 + 4:
        raise PayloadTooLarge(f"The image parameter decodes to more than {max_bytes} bytes.")
    return imaging.decode_base64_image(text)


async def to_model_input(
    data: bytes, settings: Settings, preprocess: Preprocess, gate: DecodeGate
) -> torch.Tensor:
    """Upload bytes -> [1, 1, 32, 32], decoded on the decode gate's threads: a few KB of PNG can
    hold 4096x4096 pixels, so the byte size says nothing about the decoding cost, and the gate
    bounds how many pixels are being decoded at once (503 when it cannot finish in time)."""
    decode = functools.partial(
        imaging.normalize_upload,
        data,
        preprocess=preprocess != "none",
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
    )
    pixels = min(image_pixels(data), settings.max_image_pixels)
    image = await gate.run(pixels, decode, time_left_s(settings.request_timeout_s))
    return image.unsqueeze(0)
