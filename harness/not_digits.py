"""Uploads that are not a digit, and uploads that are, as the bytes a caller would send; seeded.

Issue 30's acceptance set for the typicality score (`models.typicality`): on the digit side MNIST
test digits and phone photos of them (`harness/photo_scenes.py`, issue 13 and 20's scenes); on the
other side Fashion-MNIST items, blank and near-blank pages, letters and scribbles drawn with a
round pen as on the web page's pad, geometric shapes, two digits side by side and noise. Every
builder takes a seed (and the real images it needs), so a test, `bench/typicality_eval.py` and
the model card's table see the same uploads.

Letters that are written as digits (O, o, I, l, i, Z, z, S, s, B, b, g, q) and shapes that are
digits (a ring, a lone bar, a rectangle so flat it is one) are left out: a well-drawn "O" is a
well-drawn 0. So are a coffee cup's ring stain (a 0) and a blank page's edge against the desk: the
normaliser keeps a sliver of the edge as the "digit", a bar, which the model cannot tell from a 1.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from harness import photo_scenes as scenes

PAD_SIDE = 280  # the web page's drawing pad (app/static/index.html), white strokes on black
SUPER = 2  # strokes are drawn at twice the size and averaged down: antialiased as a browser's

Stroke = list[tuple[float, float]]


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 greyscale [H, W] (or RGB [H, W, 3]) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 16):
    """Points on an ellipse from `start` to `end` degrees (0 = right, 90 = down)."""
    angles = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Skeletons in a unit box (x right, y down), one list of points per pen stroke.
LETTERS: dict[str, list[Stroke]] = {
    "A": [[(0, 1), (0.5, 0), (1, 1)], [(0.22, 0.6), (0.78, 0.6)]],
    "C": [_arc(0.55, 0.5, 0.45, 0.5, -50, -310)],
    "D": [[(0.1, 0), (0.1, 1)], [(0.1, 0), *_arc(0.35, 0.5, 0.6, 0.5, -90, 90), (0.1, 1)]],
    "E": [[(1, 0), (0, 0), (0, 1), (1, 1)], [(0, 0.5), (0.75, 0.5)]],
    "F": [[(1, 0), (0, 0), (0, 1)], [(0, 0.48), (0.75, 0.48)]],
    "G": [_arc(0.55, 0.5, 0.45, 0.5, -50, -360), [(1.0, 0.5), (0.6, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 0.5), (1, 0.5)]],
    "J": [[(0.3, 0), (1, 0)], [(0.7, 0), (0.7, 0.7), *_arc(0.4, 0.7, 0.3, 0.3, 0, 180)]],
    "K": [[(0, 0), (0, 1)], [(1, 0), (0, 0.6)], [(0.3, 0.42), (1, 1)]],
    "L": [[(0, 0), (0, 1), (0.9, 1)]],
    "M": [[(0, 1), (0, 0), (0.5, 0.65), (1, 0), (1, 1)]],
    "N": [[(0, 1), (0, 0), (1, 1), (1, 0)]],
    "P": [[(0, 1), (0, 0), *_arc(0.35, 0.27, 0.55, 0.27, -90, 90), (0, 0.54)]],
    "Q": [_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 24), [(0.6, 0.7), (1.05, 1.1)]],
    "R": [[(0, 1), (0, 0), *_arc(0.35, 0.27, 0.55, 0.27, -90, 90), (0, 0.54), (1, 1)]],
    "T": [[(0, 0), (1, 0)], [(0.5, 0), (0.5, 1)]],
    "U": [[(0, 0), (0, 0.6), *_arc(0.5, 0.6, 0.5, 0.4, 180, 0), (1, 0)]],
    "V": [[(0, 0), (0.5, 1), (1, 0)]],
    "W": [[(0, 0), (0.25, 1), (0.5, 0.35), (0.75, 1), (1, 0)]],
    "X": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "Y": [[(0, 0), (0.5, 0.5), (1, 0)], [(0.5, 0.5), (0.5, 1)]],
    "a": [_arc(0.45, 0.7, 0.4, 0.3, -20, -340), [(0.9, 0.4), (0.9, 1)]],
    "e": [[(0.1, 0.65), (0.95, 0.65), *_arc(0.52, 0.65, 0.43, 0.35, 0, -320)]],
    "h": [[(0, 0), (0, 1)], [(0, 0.7), *_arc(0.45, 0.7, 0.45, 0.3, 180, 360), (0.9, 1)]],
    "k": [[(0, 0), (0, 1)], [(0.8, 0.4), (0, 0.75)], [(0.3, 0.65), (0.85, 1)]],
    "m": [
        [(0, 0.4), (0, 1)],
        [(0, 0.55), *_arc(0.25, 0.55, 0.25, 0.15, 180, 360), (0.5, 1)],
        [(0.5, 0.55), *_arc(0.75, 0.55, 0.25, 0.15, 180, 360), (1, 1)],
    ],
    "n": [[(0, 0.4), (0, 1)], [(0, 0.6), *_arc(0.45, 0.6, 0.45, 0.2, 180, 360), (0.9, 1)]],
    "r": [[(0, 0.4), (0, 1)], [(0, 0.65), *_arc(0.4, 0.6, 0.4, 0.2, 180, 300)]],
    "t": [[(0.4, 0), (0.4, 0.9), (0.7, 1)], [(0, 0.35), (0.85, 0.35)]],
    "u": [[(0, 0.4), (0, 0.8), *_arc(0.45, 0.8, 0.45, 0.2, 180, 0)], [(0.9, 0.4), (0.9, 1)]],
    "v": [[(0, 0.4), (0.5, 1), (1, 0.4)]],
    "w": [[(0, 0.4), (0.25, 1), (0.5, 0.55), (0.75, 1), (1, 0.4)]],
    "x": [[(0, 0.4), (1, 1)], [(1, 0.4), (0, 1)]],
    "y": [[(0, 0.3), (0.5, 0.75)], [(1, 0.3), (0.2, 1.2)]],
}


def _pen(strokes: list[Stroke], width: float, side: int = PAD_SIDE) -> np.ndarray:
    """White round-pen strokes (pixel coordinates at `side`) on black, uint8 [side, side]."""
    big = side * SUPER
    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    radius = width * SUPER / 2
    for stroke in strokes:
        points = [(x * SUPER, y * SUPER) for x, y in stroke]
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / max(radius / 3, 1)))
            for t in np.linspace(0, 1, steps + 1):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(image.reduce(SUPER))


def _place(
    strokes: list[Stroke], rng: np.random.Generator, aspect: float = 1.0, wobble: float = 0.03
) -> list[Stroke]:
    """Unit-box strokes scaled onto the pad (120-200 px tall), slanted, turned a little, wobbly:
    what a hand does to a letter."""
    height = rng.uniform(120, 200)
    width = height * aspect * rng.uniform(0.75, 1.1)
    slant = rng.uniform(-0.25, 0.25)
    turn = math.radians(rng.uniform(-10, 10))
    cx = PAD_SIDE / 2 + rng.uniform(-25, 25)
    cy = PAD_SIDE / 2 + rng.uniform(-25, 25)
    out = []
    for stroke in strokes:
        placed = []
        for x, y in stroke:
            x = x + rng.normal(0, wobble) - 0.5
            y = y + rng.normal(0, wobble) - 0.5
            x = x * width + slant * (-y) * height
            y = y * height
            placed.append(
                (
                    cx + x * math.cos(turn) - y * math.sin(turn),
                    cy + x * math.sin(turn) + y * math.cos(turn),
                )
            )
        out.append(placed)
    return out


def letter(name: str, seed: int = 0) -> bytes:
    """One letter drawn on the pad with a round pen 12-24 px wide, as a person would draw it."""
    rng = np.random.default_rng(seed)
    strokes = _place(LETTERS[name], rng, aspect=0.75 if name.isupper() else 0.8)
    return png_bytes(_pen(strokes, rng.uniform(12, 24)))


def letters(n: int, seed: int = 0) -> list[bytes]:
    names = sorted(LETTERS)
    return [letter(names[i % len(names)], seed * 100_003 + i) for i in range(n)]


def _smooth_path(points: np.ndarray, per_segment: int = 12) -> Stroke:
    """A Catmull-Rom curve through `points`: a hand's path, not a polygon."""
    p = np.vstack([points[:1], points, points[-1:]])
    out: Stroke = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            q = 0.5 * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
            out.append((float(q[0]), float(q[1])))
    out.append((float(p[-2][0]), float(p[-2][1])))
    return out


def scribble(seed: int = 0) -> bytes:
    """One to three strokes through 6-14 random points each: a tangle, not a character."""
    rng = np.random.default_rng(seed)
    strokes = []
    centre = PAD_SIDE / 2 + rng.uniform(-30, 30, 2)
    spread = rng.uniform(50, 110)
    for _ in range(int(rng.integers(1, 4))):
        points = centre + rng.normal(0, spread, (int(rng.integers(6, 15)), 2))
        strokes.append(_smooth_path(np.clip(points, 15, PAD_SIDE - 15)))
    return png_bytes(_pen(strokes, rng.uniform(10, 22)))


def _polygon(n: int, rng: np.random.Generator, star: bool = False) -> list[tuple[float, float]]:
    radius = rng.uniform(60, 110)
    start = rng.uniform(0, 2 * math.pi)
    cx, cy = PAD_SIDE / 2 + rng.uniform(-20, 20, 2)
    corners = 2 * n if star else n
    out = []
    for k in range(corners):
        r = radius * (0.45 if star and k % 2 else 1.0)
        a = start + 2 * math.pi * k / corners
        out.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return out


SHAPES = ("triangle", "square", "rectangle", "pentagon", "star", "disc", "filled-square", "arrow")


def shape(name: str, seed: int = 0) -> bytes:
    """A geometric shape on the pad: outlined with the pen, or filled."""
    rng = np.random.default_rng(seed)
    width = rng.uniform(10, 20)
    if name in ("triangle", "square", "pentagon", "star"):
        corners = {"triangle": 3, "square": 4, "pentagon": 5, "star": 5}[name]
        points = _polygon(corners, rng, star=name == "star")
        return png_bytes(_pen([[*points, points[0]]], width))
    if name == "rectangle":
        w = rng.uniform(150, 240)
        h = w / rng.uniform(1.3, 2.5)  # flatter than that, at 20 px it is a bar: a 1
        if rng.random() < 0.5:
            w, h = h, w
        x0, y0 = (PAD_SIDE - w) / 2, (PAD_SIDE - h) / 2
        box = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h), (x0, y0)]
        return png_bytes(_pen([box], width))
    if name == "arrow":
        y, x0, x1 = PAD_SIDE / 2, 40.0, 240.0
        head = rng.uniform(40, 70)
        strokes = [[(x0, y), (x1, y)], [(x1 - head, y - head), (x1, y), (x1 - head, y + head)]]
        turn = rng.uniform(0, 2 * math.pi)
        c = PAD_SIDE / 2

        def rotate(p: tuple[float, float]) -> tuple[float, float]:
            dx, dy = p[0] - c, p[1] - c
            return (
                c + dx * math.cos(turn) - dy * math.sin(turn),
                c + dx * math.sin(turn) + dy * math.cos(turn),
            )

        return png_bytes(_pen([[rotate(p) for p in s] for s in strokes], width))
    big = Image.new("L", (PAD_SIDE, PAD_SIDE), 0)
    draw = ImageDraw.Draw(big)
    cx, cy = PAD_SIDE / 2 + rng.uniform(-20, 20, 2)
    r = rng.uniform(40, 100)
    if name == "disc":
        ry = r * rng.uniform(0.6, 1.0)
        draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=255)
    else:
        draw.polygon(_polygon(4, rng), fill=255)
    return png_bytes(np.asarray(big))


def shapes(n: int, seed: int = 0) -> list[bytes]:
    return [shape(SHAPES[i % len(SHAPES)], seed * 100_003 + i) for i in range(n)]


def two_digits(first: np.ndarray, second: np.ndarray, gap: int = 2) -> bytes:
    """Two MNIST digits written side by side as a number is, `gap` px apart (0-2 at MNIST's
    scale: close enough that they are one piece of writing, which the normaliser keeps whole)."""
    parts = []
    for digit in (first, second):
        cols = np.flatnonzero(digit.max(axis=0) > 0)
        parts.append(digit[:, cols.min() : cols.max() + 1])
    width = parts[0].shape[1] + gap + parts[1].shape[1]
    both = np.zeros((28, width + 8), dtype=np.uint8)
    both[:, 4 : 4 + parts[0].shape[1]] = parts[0]
    both[:, 4 + parts[0].shape[1] + gap : 4 + width] = parts[1]
    return png_bytes(both)


def pairs(digits: np.ndarray, seed: int = 0) -> list[bytes]:
    """Consecutive digits in pairs, each pair its own gap."""
    rng = np.random.default_rng(seed)
    return [
        two_digits(digits[i], digits[i + 1], int(rng.integers(0, 3)))
        for i in range(0, len(digits) - 1, 2)
    ]


NOISES = ("uniform", "gaussian", "salt-and-pepper", "smooth", "photo-grain")


def noise(name: str, seed: int = 0) -> bytes:
    """Random pixels: uniform, Gaussian, salt and pepper, smoothed blobs, or a grainy photo."""
    rng = np.random.default_rng(seed)
    side = int(rng.choice([28, 64, 256]))
    if name == "uniform":
        pixels = rng.uniform(0, 255, (side, side))
    elif name == "gaussian":
        pixels = rng.normal(128, 60, (side, side))
    elif name == "salt-and-pepper":
        pixels = (rng.random((side, side)) < rng.uniform(0.05, 0.5)) * 255.0
    elif name == "smooth":
        from scipy import ndimage

        field = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), side / rng.uniform(8, 20))
        pixels = (field - field.min()) / (np.ptp(field) + 1e-9) * 255
    else:
        pixels = rng.normal(200, 25, (scenes.HEIGHT, scenes.WIDTH))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG")
        return buffer.getvalue()
    return png_bytes(np.clip(pixels, 0, 255).astype(np.uint8))


def noises(n: int, seed: int = 0) -> list[bytes]:
    return [noise(NOISES[i % len(NOISES)], seed * 100_003 + i) for i in range(n)]


BLANK_DIGIT = np.zeros((28, 28), np.uint8)


def stain(seed: int = 0) -> bytes:
    """A photographed page with nothing on it but a blot (spilt coffee, a drop of ink soaked in):
    soft-edged and a lot lighter than ink. (A coffee cup's ring is left out: a ring is a 0.)"""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    page = np.full((scenes.HEIGHT, scenes.WIDTH), scenes.PAPER, np.float32)
    y, x = np.mgrid[0 : scenes.HEIGHT, 0 : scenes.WIDTH].astype(np.float32)
    cy, cx = rng.uniform(140, 340), rng.uniform(180, 460)
    r = rng.uniform(30, 110)
    wobble = 1 + 0.15 * np.sin(np.arctan2(y - cy, x - cx) * int(rng.integers(3, 8)))
    blot = (np.hypot(y - cy, x - cx) * wobble < r).astype(np.float32)
    mark = ndimage.gaussian_filter(blot, rng.uniform(3, 12))
    page *= 1 - rng.uniform(0.15, 0.45) * np.clip(mark, 0, 1)
    return scenes._photograph(page, scenes._lighting(rng), rng)


def speck(seed: int = 0) -> bytes:
    """A page with one small dot or dust mark on it, a few px across."""
    rng = np.random.default_rng(seed)
    page = np.full((scenes.HEIGHT, scenes.WIDTH), scenes.PAPER, np.float32)
    y, x = np.mgrid[0 : scenes.HEIGHT, 0 : scenes.WIDTH].astype(np.float32)
    cy, cx = rng.uniform(100, 380), rng.uniform(100, 540)
    r = rng.uniform(2, 7)
    page *= 1 - 0.8 * np.clip(r + 0.5 - np.hypot(y - cy, x - cx), 0, 1)
    return scenes._photograph(page, scenes._lighting(rng), rng)


BLANKS: dict[str, Callable[[int], bytes]] = {
    "blank-page": lambda s: scenes.clean_page(BLANK_DIGIT, s),
    "shadow": lambda s: scenes.shadow_band(BLANK_DIGIT, scenes.SIDES[s % 4], s),
    "stain": stain,
    "speck": speck,
    "lines-only": scenes.lines_only,
    "blank-note": scenes.blank_note,
    "white": lambda s: png_bytes(np.full((28 * (1 + s % 3),) * 2, 255, np.uint8)),
    "black": lambda s: png_bytes(np.zeros((28 * (1 + s % 3),) * 2, np.uint8)),
}


def blanks(n: int, seed: int = 0) -> list[bytes]:
    names = list(BLANKS)
    return [BLANKS[names[i % len(names)]](seed * 100_003 + i) for i in range(n)]


# The photos of issue 13 and 20 (tests/api/test_upload_artifacts.py): each a real digit.
PHOTO_SCENES: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "clean-page": scenes.clean_page,
    "shadow": lambda d, s: scenes.shadow_band(d, scenes.SIDES[s % 4], s),
    "page-edge": lambda d, s: scenes.page_edge(d, scenes.SIDES[s % 4], s),
    "ruled-page": scenes.ruled_page,
    **scenes.PAGE_SCENES,
}


def photos(digits: np.ndarray, seed: int = 0) -> list[bytes]:
    """One photo per digit, the scenes taken in turn, each with its own seed."""
    names = list(PHOTO_SCENES)
    return [
        PHOTO_SCENES[names[i % len(names)]](digit, seed * 100_003 + i)
        for i, digit in enumerate(digits)
    ]


# The acceptance set: what `tests/api/test_typicality.py` and `bench/typicality_eval.py` score.
DIGIT_KINDS = ("mnist", "photo")
OTHER_KINDS = ("fashion", "blank", "letters", "scribbles", "shapes", "two-digits", "noise")
MEASURED_FROM = 5000  # MNIST test digits 0-4999 calibrate the score (vae-calibrate-typicality)


def acceptance_uploads(
    mnist_test: np.ndarray, fashion_test: np.ndarray, n: int, more: dict[str, int] | None = None
) -> dict[str, list[bytes]]:
    """`n` uploads of each kind (`more` may ask for another count of some), as bytes; every MNIST
    digit in them (plain, photographed or paired) from the test set's second half, which the
    calibration never saw: 5000 on for plain digits, 7000 on for photos, 8000 on for pairs."""
    count = {kind: n for kind in (*DIGIT_KINDS, *OTHER_KINDS)} | (more or {})
    digits = mnist_test[MEASURED_FROM:]
    return {
        "mnist": [png_bytes(d) for d in digits[: count["mnist"]]],
        "photo": photos(digits[2000 : 2000 + count["photo"]]),
        "fashion": [png_bytes(item) for item in fashion_test[: count["fashion"]]],
        "blank": blanks(count["blank"]),
        "letters": letters(count["letters"]),
        "scribbles": [scribble(i) for i in range(count["scribbles"])],
        "shapes": shapes(count["shapes"]),
        "two-digits": pairs(digits[3000 : 3000 + 2 * count["two-digits"]]),
        "noise": noises(count["noise"]),
    }


def auroc(others: np.ndarray, digits: np.ndarray) -> float:
    """P(score of a non-digit > score of a digit), ties counting half (higher: less digit-like)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([others, digits]))
    n1, n0 = len(others), len(digits)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
