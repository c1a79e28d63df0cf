"""`app.images.strokes`: boxes and underlines are told from digits; odd widths become MNIST's.

Every MNIST digit, at photo size, must come back from `frame_or_underline` as None (a squarish 0
is no box, the flat base of a 2 no underline), and all but a few in a thousand unchanged from
`like_mnist_strokes`, so ordinary uploads are not touched.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.images.strokes import MNIST_WIDTH, frame_or_underline, like_mnist_strokes, stroke_width
from harness import photo_scenes as scenes
from training.data import load_split


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("data", "mnist", train=False).images[:1000].numpy()


def scaled(digit: np.ndarray, side: int = 140) -> np.ndarray:
    big = Image.fromarray(digit).resize((side, side), Image.BILINEAR)
    ink = np.asarray(big, dtype=np.float32) / 255
    rows, cols = np.nonzero(ink > 0.02)
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def with_marks(digit: np.ndarray, draw) -> np.ndarray:
    """The digit's strokes (its ink past a quarter) on a 260x260 canvas with more drawn on it."""
    canvas = Image.new("L", (260, 260), 0)
    canvas.paste(Image.fromarray(digit).resize((140, 140), Image.BILINEAR), (60, 50))
    draw(ImageDraw.Draw(canvas))
    marks = np.asarray(canvas) > 64
    rows, cols = np.nonzero(marks)
    return marks[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def test_no_mnist_digit_is_taken_for_a_box_or_an_underline(digits: np.ndarray) -> None:
    taken = [i for i, d in enumerate(digits) if frame_or_underline(scaled(d) > 0.25) is not None]
    assert taken == []


def test_a_box_round_the_digit_is_found_and_not_the_digit(digits: np.ndarray) -> None:
    for digit in digits[:10]:
        marks = with_marks(
            digit, lambda pen: pen.rectangle((40, 30, 220, 210), outline=255, width=4)
        )
        frame = frame_or_underline(marks)
        assert frame is not None
        assert frame[0].all() and frame[-1].all() and frame[:, 0].all() and frame[:, -1].all()
        inner = marks & ~frame
        assert inner.sum() > 0.9 * (with_marks(digit, lambda pen: None)).sum()


def test_a_line_under_the_digit_is_found(digits: np.ndarray) -> None:
    for digit in digits[:10]:
        marks = with_marks(digit, lambda pen: pen.line((30, 215, 230, 218), fill=255, width=5))
        line = frame_or_underline(marks)
        assert line is not None
        assert line[-3:].any(axis=1).all() and not line[: marks.shape[0] // 2].any()


def test_an_empty_box_is_left_alone() -> None:
    """Nothing in it to keep: it is what there is (a drawn 0, perhaps), not a frame to drop."""
    canvas = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(canvas).rectangle((20, 20, 180, 180), outline=255, width=5)
    assert frame_or_underline(np.asarray(canvas) > 64) is None


def test_ordinary_stroke_widths_are_left_alone(digits: np.ndarray) -> None:
    changed = sum(like_mnist_strokes(d) is not d for d in (scaled(x) for x in digits))
    assert changed <= 5


@pytest.mark.parametrize("pen", [1.0, 2.0, 2.5])
def test_a_fine_pen_is_widened_to_mnist_width(digits: np.ndarray, pen: float) -> None:
    for digit in digits[:10]:
        fine = scenes._thin_ink(digit, 180, pen)
        rows, cols = np.nonzero(fine)
        fine = fine[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert stroke_width(fine) < 1.0
        assert stroke_width(like_mnist_strokes(fine)) == pytest.approx(MNIST_WIDTH, abs=0.6)


def test_a_thick_marker_is_thinned() -> None:
    canvas = Image.new("F", (200, 200), 0.0)
    ImageDraw.Draw(canvas).line((100, 10, 100, 190), fill=1.0, width=70)  # a very fat 1
    blob = np.asarray(canvas)
    assert stroke_width(blob) > 5.0
    assert stroke_width(like_mnist_strokes(blob)) < stroke_width(blob)
