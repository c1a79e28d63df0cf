"""Uploads in, MNIST-shaped tensors out; tensors in, PNG bytes out.

The model only knows MNIST: a white digit on black, its longer side 20 px, placed in 28x28 by its
centre of mass, here padded to 32x32. People upload photos of dark ink on paper, big canvases and
transparent PNGs, so `normalize_upload` remakes each upload the way MNIST itself was made. It is a
pure function on bytes: every limit is checked from the header before a pixel is decoded, and every
failure leaves as a `ServiceError` with its HTTP status, never as a decoder's own exception.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torchvision.utils import make_grid

from app.errors import ImageError, PayloadTooLarge, UnsupportedImageFormat

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO, phones' JPEG
MAX_SIDE = 4096
MNIST_SIDE = 28
MODEL_SIDE = 32
DIGIT_SIDE = 20
WORK_SIDE = 1024  # big photos are analysed at about this size; the digit ends up 20 px anyway
MIN_INK_CONTRAST = 0.1  # less than this between paper and ink is a blank image, not a digit
CROP_FRACTION = 0.25  # ink fainter than this share of the darkest stroke is noise, not the digit
PAPER_FRACTION = 0.1  # the faintest tenth of the ink's range is paper tone and JPEG ringing
RIM_FRACTION = 0.02  # ...unless it touches a stroke: the faint antialiased rim is part of the digit
PADDING = (MODEL_SIDE - MNIST_SIDE) // 2
BASE64_CLEANUP = str.maketrans({"\n": None, "\r": None, "\t": None, " ": "+", "-": "+", "_": "/"})


def normalize_upload(
    data: bytes,
    *,
    preprocess: bool = True,
    max_bytes: int = 5 * 1024 * 1024,
    max_pixels: int = MAX_SIDE * MAX_SIDE,
) -> torch.Tensor:
    """Decodes an uploaded image into what the model sees: float32 [1, 32, 32] in [0, 1].

    With `preprocess`, MNIST's recipe: EXIF orientation, alpha onto a contrasting background,
    greyscale, inversion when the paper is lighter than the ink, paper tone and lighting removed,
    crop to the ink, longer side scaled to 20 px, placed in 28x28 by centre of mass, padded to 32.
    An image with no ink in it (blank paper, one flat colour) comes back all black, so a caller
    still gets an answer and can see what the model saw.

    Without it the image is taken as already MNIST-like: greyscale, 28x28 padded to 32x32, 32x32
    as is, and any other size stretched to 28x28 (aspect not kept, antialiased) and padded.

    Raises PayloadTooLarge (413) past `max_bytes`, `max_pixels` or 4096 px a side, all read from
    the header before decoding; UnsupportedImageFormat (415) for a real image in another format;
    ImageError (422) for anything that is not a decodable image.
    """
    image = _open_limited(data, max_bytes=max_bytes, max_pixels=max_pixels)
    grey = _decode_grey(image, preprocess=preprocess)
    field = np.pad(_mnist_digit(grey), PADDING) if preprocess else _as_model_input(grey)
    return torch.from_numpy(np.clip(field, 0.0, 1.0).astype(np.float32)).unsqueeze(0)


def _open_limited(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Opens the header lazily and enforces every limit before any pixel is decoded."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The upload is {len(data)} bytes, over the limit of {max_bytes} bytes."
        )
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
        accepted = "PNG, JPEG, WebP, BMP, GIF or TIFF"
        return UnsupportedImageFormat(f"{found} images are not supported; send {accepted}.")
    return ImageError("The upload is not an image file that could be recognised.")


def _decode_grey(image: Image.Image, *, preprocess: bool) -> Image.Image:
    """Decodes the first frame to an 8-bit greyscale image, alpha composited."""
    try:
        if preprocess and image.format in ("JPEG", "MPO"):
            image.draft(None, (WORK_SIDE, WORK_SIDE))  # big photos decode at 1/2..1/8 scale
        image.load()
        if preprocess:
            image = _exif_upright(image)
        return _greyscale(image)
    except Exception as exc:  # decoders fail in many ways (OSError, SyntaxError, EOFError, ...)
        raise ImageError("The image is truncated or corrupt and could not be decoded.") from exc


def _exif_upright(image: Image.Image) -> Image.Image:
    """Applies the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _greyscale(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode != "F" or values.max() > 1.0 else 1.0
        return _to_image(values / max(scale, float(values.max())))
    if not image.has_transparency_data:
        return image.convert("L")
    rgba = image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    return _to_image(grey * alpha + _contrasting_background(grey, alpha) * (1.0 - alpha))


def _to_image(grey: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _contrasting_background(grey: np.ndarray, alpha: np.ndarray) -> float:
    """White behind dark strokes, black behind light ones: transparency is always background."""
    weight = float(alpha.sum())
    stroke = float((grey * alpha).sum()) / weight if weight > 0 else 0.0
    return 1.0 if stroke < 0.5 else 0.0


def _mnist_digit(grey: Image.Image) -> np.ndarray:
    """MNIST's recipe from greyscale: ink made white on black, cropped, 20 px, centred in 28x28."""
    ink = _ink(np.asarray(_smooth(_shrink(grey)), dtype=np.float32) / 255.0)
    box = _ink_box(ink)
    if box is None:
        return np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    top, bottom, left, right = box
    return _place_by_centre_of_mass(_scale_longer_side(ink[top:bottom, left:right], DIGIT_SIDE))


def _shrink(grey: Image.Image) -> Image.Image:
    """Averages big images down to at most WORK_SIDE px; the digit ends up 20 px anyway."""
    factor = -(-max(grey.size) // WORK_SIDE)
    return grey.reduce(factor) if factor >= 2 else grey


def _smooth(grey: Image.Image) -> Image.Image:
    """A blur of a 400th of the image, so sensor noise and paper grain do not read as ink.

    MNIST-sized images are left alone; on photos it is far below the 20 px the digit ends up at.
    """
    sigma = max(grey.size) / 400
    return grey.filter(ImageFilter.GaussianBlur(sigma)) if sigma >= 0.5 else grey


def _ink(grey: np.ndarray) -> np.ndarray:
    """Makes the ink white on black and stretches it so the paper is 0 and the darkest ink 1.

    Paper is the bulk of the image, so its level is the median; ink is the extreme furthest from
    it, so a vignetted or unevenly lit page cannot outweigh a thin stroke. After flattening, the
    paper is what fills the border: its median plus three robust standard deviations (or a tenth
    of the ink's range, whichever is more) becomes 0, unless the border is perfectly flat, as in
    MNIST or a drawing. Median and MAD still hold when a tightly cropped digit hits the edges.
    """
    paper = float(np.median(grey))
    if paper - float(grey.min()) > float(grey.max()) - paper:
        grey = 1.0 - grey
    grey = _flatten_paper(grey)
    border = _border(grey)
    level = float(np.median(border))
    peak = float(grey.max())
    spread = 3 * 1.4826 * float(np.median(np.abs(border - level)))
    clean = float(border.max()) == level  # a drawn or MNIST image: faint pixels are antialiasing
    floor = level if clean else level + max(spread, PAPER_FRACTION * (peak - level))
    if peak - floor < MIN_INK_CONTRAST:
        return np.zeros_like(grey)
    return np.clip((grey - floor) / (peak - floor), 0.0, 1.0)


def _flatten_paper(ink: np.ndarray) -> np.ndarray:
    """Subtracts the paper's level cell by cell, so uneven lighting and vignetting are not ink.

    A cell's paper is the lowest median among it and its neighbours (a stroke rarely fills a
    3x3 block of cells), capped at the brightest paper among the outer cells so dense strokes are
    never taken for paper. MNIST-sized images are left alone.
    """
    height, width = ink.shape
    cell = max(height, width) // 16
    if cell < 8 or min(height, width) < cell:
        return ink
    rows, cols = height // cell, width // cell
    cells = ink[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell)
    medians = Image.fromarray(np.median(cells, axis=(1, 3)).astype(np.float32))
    paper = np.asarray(medians.filter(ImageFilter.MinFilter(3)))
    paper = np.minimum(paper, _border(paper).max()).astype(np.float32)
    level = Image.fromarray(paper).resize((width, height), Image.BILINEAR)
    return np.clip(ink - np.asarray(level, dtype=np.float32), 0.0, None)


def _border(grey: np.ndarray) -> np.ndarray:
    """The outer ring, a 30th of the shorter side thick (at least one pixel or cell)."""
    ring = max(1, min(grey.shape) // 30)
    mask = np.ones(grey.shape, dtype=bool)
    mask[ring:-ring, ring:-ring] = False
    return grey[mask]


def _ink_box(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (top, bottom, left, right) of the ink.

    Strokes are what passes a quarter of the darkest ink; their faint antialiased rims count too,
    but faint specks away from any stroke (grain, dust, noise) do not.
    """
    peak = float(ink.max())
    if peak <= 0.0:
        return None
    strokes = Image.fromarray((ink > CROP_FRACTION * peak).astype(np.uint8) * 255)
    near_strokes = np.asarray(strokes.filter(ImageFilter.MaxFilter(3))) > 0
    rows, cols = np.nonzero(near_strokes & (ink > RIM_FRACTION * peak))
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def _scale_longer_side(digit: np.ndarray, side: int) -> np.ndarray:
    height, width = digit.shape
    scale = side / max(height, width)
    return _resize(digit, max(1, round(width * scale)), max(1, round(height * scale)))


def _resize(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of a float image, clipped back into [0, 1] after Lanczos' ringing."""
    resized = Image.fromarray(grey.astype(np.float32)).resize((width, height), Image.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _place_by_centre_of_mass(digit: np.ndarray) -> np.ndarray:
    """Puts the digit's centre of mass on pixel 14 of 28 (as in MNIST), kept inside the field."""
    height, width = digit.shape
    mass = float(digit.sum())
    if mass <= 0.0:
        return np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    centre_y = float((digit.sum(axis=1) * np.arange(height)).sum()) / mass
    centre_x = float((digit.sum(axis=0) * np.arange(width)).sum()) / mass
    top = min(max(round(MNIST_SIDE / 2 - centre_y), 0), MNIST_SIDE - height)
    left = min(max(round(MNIST_SIDE / 2 - centre_x), 0), MNIST_SIDE - width)
    field = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field


def _as_model_input(grey: Image.Image) -> np.ndarray:
    """preprocess=none: 32x32 as is, 28x28 padded, any other size stretched to 28x28 and padded."""
    if grey.size not in ((MODEL_SIDE, MODEL_SIDE), (MNIST_SIDE, MNIST_SIDE)):
        grey = grey.resize((MNIST_SIDE, MNIST_SIDE), Image.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float32) / 255.0
    return pixels if grey.size == (MODEL_SIDE, MODEL_SIDE) else np.pad(pixels, PADDING)


def to_png(image: torch.Tensor) -> bytes:
    """[1, H, W] or [H, W] floats in [0, 1] -> 8-bit greyscale PNG, byte-identical for one input."""
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 2:
        raise ValueError(f"to_png takes [1, H, W] or [H, W], not {list(image.shape)}")
    pixels = image.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def grid_png(images: torch.Tensor, nrow: int, padding: int = 2) -> bytes:
    """[N, 1, H, W] -> one PNG grid, `nrow` images a row, `padding` black pixels between them."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=0.0)
    return to_png(grid[0])


def strip_png(images: torch.Tensor) -> bytes:
    """[N, 1, H, W] -> one PNG with all the images side by side in a single row."""
    return grid_png(images, nrow=max(1, images.shape[0]))


def decode_base64_image(text: str) -> bytes:
    """Decodes base64url or standard base64, padding optional, to the bytes of an image file.

    A `data:` URL prefix is dropped, line breaks are ignored, and a space is read as "+", which is
    what an unescaped standard-base64 "+" becomes in a query string.
    """
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    cleaned = text.translate(BASE64_CLEANUP).rstrip("=")
    if not cleaned:
        raise ImageError("The base64 image is empty.")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("The image is not valid base64 or base64url text.") from exc
