"""What the routes share: reading uploads into model inputs and rendering PNG/JSON responses."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any, Literal

import torch
from fastapi import Response, UploadFile

from app import imaging
from app.config import Settings
from app.errors import PayloadTooLarge

Preprocess = Literal["auto", "none"]
PNG = "image/png"

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {PNG: {"schema": {"type": "string", "format": "binary"}}}}
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in (
        (401, "API key missing or wrong"),
        (413, "upload over the byte or pixel limits"),
        (415, "an image format we do not take"),
        (422, "invalid input"),
        (503, "queue full (Retry-After) or model not loaded"),
        (504, "inference timed out"),
    )
}


async def normalize(data: bytes, settings: Settings, preprocess: Preprocess) -> torch.Tensor:
    """Upload bytes -> [1, 1, 32, 32], decoded off the event loop: a few KB of PNG can hold
    4096x4096 pixels, so the byte size says nothing about the decoding cost."""
    image = await asyncio.to_thread(
        imaging.normalize_upload,
        data,
        preprocess=preprocess != "none",
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
    )
    return image.unsqueeze(0)


async def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """Refuses an oversized file from its recorded size before reading it into memory."""
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"The upload is {file.size} bytes, over the limit of {settings.max_upload_bytes} bytes."
        )
    return await file.read()


def decode_base64url(text: str, max_bytes: int) -> bytes:
    """`?image=` carries the file as base64url; the length is checked before anything decodes."""
    if len(text) > math.ceil(max_bytes / 3) * 4 + 4:
        raise PayloadTooLarge(f"The image parameter decodes to more than {max_bytes} bytes.")
    return imaging.decode_base64_image(text)


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def png_response(png: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(png, media_type=PNG, headers=headers)


def grid_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))
