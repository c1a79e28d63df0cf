"""An upload's bytes, checked and opened once: size, format and pixel limits before any decoding.

A few KB of PNG can hold 4096x4096 pixels, so every limit is read from the header (Pillow opens
lazily) and the opened image carries its pixel count to admission control; the decode itself
(`app.images.normalise`) then runs on a decode thread without parsing the header again.
"""

from __future__ import annotations

import base64
import binascii
import io
import math

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from app.errors import ImageError, PayloadTooLarge, UnsupportedImageFormat

# The formats the service decodes (JPEG covers MPO, phones' JPEG), and how the docs name them.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"
UPLOAD_DESCRIPTION = f"{FORMAT_NAMES}; at most `VAE_MAX_UPLOAD_BYTES` (see the API description)"
MAX_SIDE = 4096
BASE64_CLEANUP = str.maketrans({"\n": None, "\r": None, "\t": None, " ": "+", "-": "+", "_": "/"})


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """Refuses an oversized file from its recorded size before reading it into memory."""
    if file.size is not None and file.size > max_bytes:
        raise _too_many_bytes(file.size, max_bytes)
    return await file.read()


def decode_base64url(text: str, max_bytes: int) -> bytes:
    """`?image=` carries the file as base64url or standard base64, padding optional.

    The length is checked before anything decodes. A `data:` URL prefix is dropped, line breaks
    are ignored, and a space is read as "+", which is what an unescaped "+" becomes in a query.
    """
    if len(text) > math.ceil(max_bytes / 3) * 4 + 4:
        raise PayloadTooLarge(f"The image parameter decodes to more than {max_bytes} bytes.")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    cleaned = text.translate(BASE64_CLEANUP).rstrip("=")
    if not cleaned:
        raise ImageError("The base64 image is empty.")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("The image is not valid base64 or base64url text.") from exc


def open_upload(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Opens the header lazily and enforces every limit before any pixel is decoded.

    Raises PayloadTooLarge (413) past `max_bytes`, `max_pixels` or 4096 px a side;
    UnsupportedImageFormat (415) for a real image in another format; ImageError (422) for
    anything that is not an image.
    """
    if len(data) > max_bytes:
        raise _too_many_bytes(len(data), max_bytes)
    if not data:
        raise ImageError("The upload is empty; send an image file.")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(max_pixels) from exc  # over 2x Pillow's limit, or warnings as errors
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except Exception as exc:  # a broken header can trip any of Pillow's parsers
        raise ImageError("The upload is not a readable image; its header is corrupt.") from exc
    width, height = image.size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        raise _too_many_pixels(max_pixels, width, height)
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    return image


def _too_many_bytes(size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The upload is {size} bytes, over the limit of {max_bytes} bytes.")


def _too_many_pixels(max_pixels: int, width: int = 0, height: int = 0) -> PayloadTooLarge:
    size = f" is {width}x{height} pixels and" if width else ""
    return PayloadTooLarge(
        f"The image{size} is too large; images may be at most {MAX_SIDE}x{MAX_SIDE}"
        f" and {max_pixels:,} pixels in all."
    )


def _unidentified(data: bytes) -> ImageError:
    """Tells a real image in a format we do not take (415) from bytes that are no image (422)."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            found = other.format
    except Exception:
        found = None
    if found:
        return UnsupportedImageFormat(f"{found} images are not supported; send {FORMAT_NAMES}.")
    return ImageError("The upload is not an image file that could be recognised.")
