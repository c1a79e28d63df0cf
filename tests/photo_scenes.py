"""Phone-style photos of one MNIST digit on paper, with the artefacts that are not ink.

A photo is illumination times reflectance: the paper reflects about 0.85 of the light, the ink
0.12, and a shadow or the desk changes one factor over a large area with a sharp edge. Every scene
is 640x480 RGB with sensor grain, JPEG-compressed like a phone's upload, and seeded, so a test and
the pictures in docs/ (`scripts/upload_examples.py`) are the same image every time.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

WIDTH, HEIGHT = 640, 480
PAPER, INK = 0.85, 0.12  # reflectances
LIGHT = 245.0  # grey level of fully lit white
SIDES = ("left", "right", "top", "bottom")


def _digit_reflectance(
    digit: np.ndarray, rng: np.random.Generator, size: int, shift: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The page's reflectance with the digit (scaled to `size` px) near the middle + `shift`."""
    page = np.full((HEIGHT, WIDTH), PAPER, dtype=np.float32)
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.BICUBIC), np.float32) / 255
    top = HEIGHT // 2 - size // 2 + int(rng.integers(-40, 41)) + shift[0]
    left = WIDTH // 2 - size // 2 + int(rng.integers(-60, 61)) + shift[1]
    window = page[top : top + size, left : left + size]
    page[top : top + size, left : left + size] = window * (1 - ink) + INK * np.clip(ink, 0, 1)
    return page


def _band(side: str, fraction: float, edge_blur: float) -> np.ndarray:
    """1 inside the band along `side` covering `fraction` of the page, 0 outside, soft edge."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    across = WIDTH if side in ("left", "right") else HEIGHT
    depth = int(across * fraction)
    if side == "left":
        mask[:, :depth] = 1
    elif side == "right":
        mask[:, WIDTH - depth :] = 1
    elif side == "top":
        mask[:depth] = 1
    else:
        mask[HEIGHT - depth :] = 1
    blurred = Image.fromarray((mask * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(edge_blur)
    )
    return np.asarray(blurred, dtype=np.float32) / 255


def _photograph(
    reflectance: np.ndarray, light: np.ndarray, rng: np.random.Generator, quality: int = 85
) -> bytes:
    """Light times reflectance, a warm tint, grain and JPEG: the bytes a phone would send."""
    grey = LIGHT * light * reflectance + rng.normal(0.0, 4.0, reflectance.shape)
    rgb = np.dstack([grey, grey * 0.96, grey * 0.88])
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _lighting(rng: np.random.Generator) -> np.ndarray:
    """Gently uneven light: brighter towards one corner, as under a desk lamp."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    slope = (np.cos(angle) * (x / WIDTH - 0.5) + np.sin(angle) * (y / HEIGHT - 0.5)) * 0.15
    return 1.0 - 0.05 + slope


def clean_page(digit: np.ndarray, seed: int = 0) -> bytes:
    """The digit on evenly lit paper: what works today, the control for the scenes below."""
    rng = np.random.default_rng(seed)
    return _photograph(_digit_reflectance(digit, rng, 240), _lighting(rng), rng)


def shadow_band(
    digit: np.ndarray, side: str, seed: int = 0, depth: float = 0.45, width: float = 1 / 3
) -> bytes:
    """A hand's or phone's shadow over `width` of the page from `side`, its edge a few px soft.

    The shadow lets through `depth` of the light; the digit stays near the middle, so the edge
    of a shadow over a third runs close to it and sometimes across a stroke.
    """
    rng = np.random.default_rng(seed)
    light = _lighting(rng) * (1 - (1 - depth) * _band(side, width, edge_blur=2.0))
    return _photograph(_digit_reflectance(digit, rng, 240), light, rng)


def page_edge(digit: np.ndarray, side: str, seed: int = 0) -> bytes:
    """The page ends a fifth of the way in from `side`, tilted a little; a wooden desk beyond.

    The desk is darker than the paper, with grain running along it, and the page casts a thin
    dark shadow on it along the edge. The digit sits in the middle of the page, not the photo.
    """
    rng = np.random.default_rng(seed)
    away = {"left": (0, 50), "right": (0, -50), "top": (40, 0), "bottom": (-40, 0)}[side]
    page = _digit_reflectance(digit, rng, 200, away)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    along, across = (y, x) if side in ("left", "right") else (x, y)
    extent = WIDTH if side in ("left", "right") else HEIGHT
    tilt = np.tan(np.radians(rng.uniform(-4, 4)))
    edge = extent / 5 + tilt * (along - along.mean())
    depth = across if side in ("left", "top") else extent - 1 - across
    desk_side = depth < edge
    grain = 0.30 + 0.05 * np.sin(across / 7.0 + 3 * np.sin(along / 60.0)) + rng.normal(0, 0.02)
    shadow_line = np.exp(-(((edge - depth) / 3.0) ** 2)) * 0.5
    desk = np.clip(grain * (1 - shadow_line), 0.05, 1)
    reflectance = np.where(desk_side, desk, page)
    return _photograph(reflectance.astype(np.float32), _lighting(rng), rng)


def ruled_page(digit: np.ndarray, seed: int = 0) -> bytes:
    """Blue lines every 32 px and a red margin, written over: lines cross the strokes."""
    rng = np.random.default_rng(seed)
    page = _digit_reflectance(digit, rng, 240)
    lines = np.ones_like(page)
    offset = int(rng.integers(0, 32))
    for row in range(offset, HEIGHT, 32):
        lines[row : row + 2] = 0.72  # light blue reads about this dark in grey
    lines[:, 70:72] = 0.62  # the red margin
    return _photograph(page * lines, _lighting(rng), rng)


def lines_only(seed: int = 0) -> bytes:
    """A ruled page with a shadow edge and nothing written on it: there is no digit to find."""
    rng = np.random.default_rng(seed)
    page = np.full((HEIGHT, WIDTH), PAPER, dtype=np.float32)
    for row in range(int(rng.integers(0, 32)), HEIGHT, 32):
        page[row : row + 2] *= 0.5
    light = _lighting(rng) * (1 - 0.55 * _band("left", 1 / 3, edge_blur=2.0))
    return _photograph(page, light, rng)
