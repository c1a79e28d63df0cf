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


# Issue 20: the paper is only part of the picture. Each scene below takes its layout (where the
# digit sits, how big it is, how far the paper is turned) from `seed`, so ten seeds are ten
# different photos, not one photo ten times.


def _layout(seed: int) -> tuple[np.random.Generator, int, float]:
    """The scene's random source, the digit's side in px (120-220) and a tilt (-12..12 degrees)."""
    rng = np.random.default_rng(1000 + seed)
    return rng, int(rng.integers(120, 221)), float(rng.uniform(-12, 12))


def _ink(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit's ink coverage in [0, 1], scaled to `size` px as a pen would draw it."""
    scaled = Image.fromarray(digit).resize((size, size), Image.BICUBIC)
    return np.clip(np.asarray(scaled, np.float32) / 255, 0, 1)


def _thin_ink(digit: np.ndarray, size: int, width: float) -> np.ndarray:
    """The digit drawn with a fine pen: its centre line (the ridge of the scaled digit, 3 px) drawn
    `width` px wider, where MNIST's strokes would be a tenth of the digit wide."""
    from scipy import ndimage

    core = _ink(digit, size) > 0.5
    distance = ndimage.distance_transform_edt(core)
    ridge = (distance >= ndimage.maximum_filter(distance, size=5) - 0.75) & (distance > 1)
    ridge = ndimage.binary_dilation(ridge, iterations=1)  # join the ridge into one line
    near = ndimage.distance_transform_edt(~ridge)
    return np.clip(width / 2 + 0.5 - near, 0, 1).astype(np.float32)


def _rectangle(shape: tuple[int, int], box: tuple[float, float, float, float], width: float):
    """Coverage of a rectangle's outline (top, left, bottom, right), `width` px thick."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    top, left, bottom, right = box
    outside = np.maximum.reduce([top - y, y - bottom, left - x, x - right])
    return np.clip(width / 2 + 0.5 - np.abs(outside), 0, 1)


def _hline(shape: tuple[int, int], row: float, left: float, right: float, width: float):
    """Coverage of a horizontal line at `row` from `left` to `right`, `width` px thick."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    along = np.maximum(np.maximum(left - x, x - right), 0)
    return np.clip(width / 2 + 0.5 - np.hypot(np.abs(y - row), along), 0, 1)


def _turned(coverage: np.ndarray, degrees: float) -> np.ndarray:
    return np.asarray(
        Image.fromarray(coverage.astype(np.float32), "F").rotate(degrees, Image.BILINEAR)
    )


def _marked_page(marks: np.ndarray, rng: np.random.Generator, paper=None, ink=INK) -> np.ndarray:
    """A whole-frame page with the marks (a square of coverage) somewhere near its middle."""
    page = np.full((HEIGHT, WIDTH), PAPER, np.float32) if paper is None else paper
    side = marks.shape[0]
    top = int(rng.integers(10, HEIGHT - side - 10)) if side < HEIGHT - 20 else (HEIGHT - side) // 2
    left = int(rng.integers(10, WIDTH - side - 10))
    window = page[top : top + side, left : left + side]
    page[top : top + side, left : left + side] = window * (1 - marks) + ink * marks
    return page


def _framed(digit: np.ndarray, size: int, margin: float, degrees: float, width: float):
    """The digit in a square canvas with a box drawn `margin` px outside its ink, all turned."""
    side = size + 2 * int(abs(margin)) + 60
    marks = np.zeros((side, side), np.float32)
    offset = (side - size) // 2
    marks[offset : offset + size, offset : offset + size] = _ink(digit, size)
    rows, cols = np.nonzero(marks > 0.3)
    box = (rows.min() - margin, cols.min() - margin, rows.max() + margin, cols.max() + margin)
    marks = np.maximum(marks, _rectangle(marks.shape, box, width))
    return np.clip(_turned(marks, degrees), 0, 1)


def note_on_desk(digit: np.ndarray, seed: int = 0) -> bytes:
    """A square note (twice the digit's size or more) on a darker wooden desk, turned a little.

    The desk fills most of the picture, so its tone is the picture's median: a normaliser that
    takes the majority for paper reads the note as a bright blob of "ink". On every third seed
    the note is a sheet filling 45-62 % of the picture, turned by 3 degrees at most, with the
    desk all round it: the paper is the bulk, but the desk is a dark ring round the digit.
    """
    rng, size, degrees = _layout(seed)
    size = min(size, 170)
    note = int(size * rng.uniform(1.5, 1.9))
    if seed % 3 == 2:
        note = int(np.sqrt(rng.uniform(0.45, 0.62) * HEIGHT * WIDTH))
        degrees /= 4
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    tone = rng.uniform(0.2, 0.4)
    grain = tone + 0.04 * np.sin(x / 9.0 + 4 * np.sin(y / 70.0)) + rng.normal(0, 0.01)
    top = int(rng.integers(10, HEIGHT - note - 10)) if note < HEIGHT - 20 else 10
    left = int(rng.integers(10, WIDTH - note - 10))
    square = np.zeros((HEIGHT, WIDTH), np.float32)
    square[top : top + note, left : left + note] = 1
    marks = np.zeros((HEIGHT, WIDTH), np.float32)
    inset = (note - size) // 2 + int(rng.integers(-10, 11))
    marks[top + inset : top + inset + size, left + inset : left + inset + size] = _ink(digit, size)
    centre = (left + note / 2, top + note / 2)
    turn = lambda a: np.asarray(  # noqa: E731
        Image.fromarray(a, "F").rotate(degrees, Image.BILINEAR, center=centre)
    )
    square, marks = np.clip(turn(square), 0, 1), np.clip(turn(marks), 0, 1)
    shadow = np.asarray(
        Image.fromarray((square * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(6))
    )
    desk = grain * (1 - 0.5 * np.roll(shadow / 255.0, (6, 6), (0, 1)))
    paper = PAPER * (1 - marks) + INK * marks
    return _photograph(
        (desk * (1 - square) + paper * square).astype(np.float32), _lighting(rng), rng
    )


def boxed_digit(digit: np.ndarray, seed: int = 0) -> bytes:
    """The digit written in a printed box, as on a form: a thin frame a few px to a fifth of the
    digit outside its ink (on the odd seeds the ink touches the frame), tilted a little."""
    rng, size, degrees = _layout(seed)
    margin = -2.0 if seed % 2 else size * rng.uniform(0.05, 0.2)
    marks = _framed(digit, size, margin, degrees / 2, width=rng.uniform(2, 5))
    return _photograph(_marked_page(marks, rng), _lighting(rng), rng)


def underlined_digit(digit: np.ndarray, seed: int = 0) -> bytes:
    """The digit above a pen line that reaches past it on both sides; on every third seed the
    digit's lowest stroke touches the line."""
    rng, size, degrees = _layout(seed)
    side = size + 120
    marks = np.zeros((side, side), np.float32)
    offset = (side - size) // 2
    marks[offset : offset + size, offset : offset + size] = _ink(digit, size)
    rows, cols = np.nonzero(marks > 0.3)
    gap = -1.0 if seed % 3 == 0 else size * rng.uniform(0.04, 0.15)
    reach = (cols.max() - cols.min()) * rng.uniform(0.1, 0.35)
    line = _hline(
        marks.shape, rows.max() + gap, cols.min() - reach, cols.max() + reach, rng.uniform(3, 6)
    )
    marks = np.clip(_turned(np.maximum(marks, line), degrees / 2), 0, 1)
    return _photograph(_marked_page(marks, rng), _lighting(rng), rng)


def faint_thin_ink(digit: np.ndarray, seed: int = 0) -> bytes:
    """A fine grey pen in an overexposed photo: the paper clips to white, the strokes 5-7 px wide
    where MNIST's would be a tenth of the digit (12-22 px), and half as dark as a marker's."""
    rng, size, degrees = _layout(seed)
    marks = np.clip(_turned(_thin_ink(digit, size, rng.uniform(2, 4)), degrees / 2), 0, 1)
    page = _marked_page(marks, rng, ink=rng.uniform(0.5, 0.62))
    return _photograph(page, _lighting(rng) * rng.uniform(1.2, 1.35), rng)


def textured_page(digit: np.ndarray, seed: int = 0) -> bytes:
    """A card with a grainy surface on a patterned cloth: the cloth's dark threads are as dark as
    the ink and fill most of the picture, and the card's own grain is a fifth as dark as the ink.
    """
    from scipy import ndimage

    rng, size, degrees = _layout(seed)
    size = min(size, 160)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    period = rng.uniform(10, 18)
    weave = (np.sin(x / period * 2 * np.pi) > 0.6) | (np.sin(y / period * 2 * np.pi) > 0.6)
    cloth = np.where(weave, 0.15, 0.45) + rng.normal(0, 0.05, (HEIGHT, WIDTH))
    cloth = ndimage.gaussian_filter(cloth, 1.0) * rng.uniform(0.7, 1.0)
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (HEIGHT, WIDTH)), (1, 4))
    card = PAPER * (1 + 0.05 * grain / grain.std())
    side = int(size * rng.uniform(1.5, 1.8))
    top = int(rng.integers(10, HEIGHT - side - 10)) if side < HEIGHT - 20 else 10
    left = int(rng.integers(10, WIDTH - side - 10))
    square = np.zeros((HEIGHT, WIDTH), np.float32)
    square[top : top + side, left : left + side] = 1
    marks = np.zeros((HEIGHT, WIDTH), np.float32)
    inset = (side - size) // 2
    marks[top + inset : top + inset + size, left + inset : left + inset + size] = _ink(digit, size)
    centre = (left + side / 2, top + side / 2)
    square, marks = (
        np.clip(
            np.asarray(Image.fromarray(a, "F").rotate(degrees, Image.BILINEAR, center=centre)), 0, 1
        )
        for a in (square, marks)
    )
    paper = card * (1 - marks) + INK * marks
    reflectance = (cloth * (1 - square) + paper * square).astype(np.float32)
    return _photograph(reflectance, _lighting(rng), rng)


def board_on_wall(digit: np.ndarray, seed: int = 0) -> bytes:
    """Chalk on a dark board that fills a third of the picture, hung on a light wall: the page is
    darker than what surrounds it, and the ink is the lightest thing on it."""
    rng, size, degrees = _layout(seed)
    size = min(size, 150)
    board_h, board_w = int(size * 1.5), int(size * 2.0)
    top = int(rng.integers(10, HEIGHT - board_h - 10))
    left = int(rng.integers(10, WIDTH - board_w - 10))
    board = np.zeros((HEIGHT, WIDTH), np.float32)
    board[top : top + board_h, left : left + board_w] = 1
    marks = np.zeros((HEIGHT, WIDTH), np.float32)
    row = top + (board_h - size) // 2
    col = left + (board_w - size) // 2 + int(rng.integers(-size // 4, size // 4 + 1))
    marks[row : row + size, col : col + size] = _ink(digit, size)
    centre = (left + board_w / 2, top + board_h / 2)
    board, marks = (
        np.clip(
            np.asarray(Image.fromarray(a, "F").rotate(degrees, Image.BILINEAR, center=centre)), 0, 1
        )
        for a in (board, marks)
    )
    slate = rng.uniform(0.08, 0.16) * (1 + 0.1 * rng.normal(0, 1, (HEIGHT, WIDTH)))
    surface = slate * (1 - marks) + rng.uniform(0.6, 0.75) * marks
    reflectance = (0.8 * (1 - board) + surface * board).astype(np.float32)
    return _photograph(reflectance, _lighting(rng), rng)


# What does not work yet (docs/uploads.md): the README's examples of failures.


def circled_digit(digit: np.ndarray, seed: int = 0) -> bytes:
    """The digit with a ring drawn round it: only straight-sided boxes are taken for frames."""
    rng = np.random.default_rng(seed)
    size, side = 180, 260
    marks = np.zeros((side, side), np.float32)
    marks[40 : 40 + size, 40 : 40 + size] = _ink(digit, size)
    y, x = np.mgrid[0:side, 0:side]
    ring = np.clip(2.5 - np.abs(np.hypot(y - side / 2, x - side / 2) - (side / 2 - 8)), 0, 1)
    return _photograph(_marked_page(np.maximum(marks, ring), rng), _lighting(rng), rng)


def row_of_boxes(digit: np.ndarray, seed: int = 0) -> bytes:
    """A form's row of three boxes, the digit in the middle one: the row is one piece of ink,
    not a box, so it stays."""
    rng = np.random.default_rng(seed)
    marks = np.zeros((220, 440), np.float32)
    marks[35:185, 145:295] = _ink(digit, 150)
    for cell in range(3):
        box = (20, 10 + cell * 140, 200, 140 + cell * 140)
        marks = np.maximum(marks, _rectangle(marks.shape, box, 3))
    page = np.full((HEIGHT, WIDTH), PAPER, np.float32)
    window = page[130:350, 100:540]
    page[130:350, 100:540] = window * (1 - marks) + INK * marks
    return _photograph(page, _lighting(rng), rng)


def blank_note(seed: int = 0) -> bytes:
    """A note on a desk with nothing written on it: with no marks there is no page, and the
    note itself is taken for the digit."""
    return note_on_desk(np.zeros((28, 28), np.uint8), seed)


# Issue 20's scenes: the paper is only part of the picture, or more than the digit is on it.
PAGE_SCENES = {
    "note-on-desk": note_on_desk,
    "boxed-digit": boxed_digit,
    "underlined-digit": underlined_digit,
    "faint-thin-ink": faint_thin_ink,
    "card-on-cloth": textured_page,
    "board-on-wall": board_on_wall,
}
