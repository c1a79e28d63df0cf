"""Arrays in [0, 1] into 8-bit greyscale PNG bytes: single images, grids and strips."""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np


def to_png(image: np.ndarray) -> bytes:
    """[1, H, W] or [H, W] floats in [0, 1] -> 8-bit greyscale PNG, byte-identical for one input."""
    values = np.asarray(image, dtype=np.float32)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"to_png takes [1, H, W] or [H, W], not {list(image.shape)}")
    scaled = values * np.float32(255)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return grey_png(scaled.astype(np.uint8))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def grey_png(pixels: np.ndarray) -> bytes:
    """uint8 [H, W] -> an 8-bit greyscale PNG: IHDR, one zlib IDAT of unfiltered rows, IEND.

    Written out because it is the whole format for this case, and Pillow's `save` runs its plugin
    machinery for every image, on the event loop of every image request (worth keeping: see
    docs/benchmarks.md). Pillow, and every browser, reads the result; the tests check it.
    """
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 0  # each row's filter type: None
    rows[:, 1:] = pixels
    data = zlib.compress(rows, 6)
    return b"".join(
        (
            _png_head(width, height),
            _PACK_LENGTH(len(data)),
            b"IDAT",
            data,
            _PACK_LENGTH(zlib.crc32(data, _IDAT_CRC)),
            _IEND,
        )
    )


_PACK_LENGTH = struct.Struct(">I").pack
_IDAT_CRC = zlib.crc32(b"IDAT")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return _PACK_LENGTH(len(data)) + kind + data + _PACK_LENGTH(zlib.crc32(kind + data))


_IEND = _png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=64)
def _png_head(width: int, height: int) -> bytes:
    """The signature and IHDR of an 8-bit greyscale image (the same few sizes, every time)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header)


def grid_png(images: np.ndarray, nrow: int, padding: int = 2) -> bytes:
    """[N, 1, H, W] -> one PNG grid, `nrow` images a row, `padding` black pixels between them:
    the layout of torchvision's `make_grid` (which one image skips: it comes back unpadded)."""
    if images.shape[0] == 1:
        return to_png(images[0])
    return to_png(tile(np.asarray(images, dtype=np.float32)[:, 0], nrow, padding))


def tile(images: np.ndarray, nrow: int, padding: int) -> np.ndarray:
    """[N, H, W] -> [rows * (H + padding) + padding, cols * (W + padding) + padding], zeros
    around and between the images, filled row by row."""
    count, height, width = images.shape
    cols = min(nrow, count)
    rows = -(-count // cols)
    step_y, step_x = height + padding, width + padding
    grid = np.zeros((rows * step_y + padding, cols * step_x + padding), np.float32)
    for k in range(count):
        top, left = (k // cols) * step_y + padding, (k % cols) * step_x + padding
        grid[top : top + height, left : left + width] = images[k]
    return grid


def strip_png(images: np.ndarray) -> bytes:
    """[N, 1, H, W] -> one PNG with all the images side by side in a single row."""
    return grid_png(images, nrow=max(1, images.shape[0]))
