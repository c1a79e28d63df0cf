"""Strokes that are not the digit (a box around it, a line under it), and strokes of odd width.

Forms put the digit in a printed box, and people underline what they write. Both are ink, both
touch or surround the digit, and both make the crop bigger than the digit, which then comes out
shrunk and off its shape. A fine pen, or a thick marker, draws strokes far thinner or thicker
than MNIST's, which were all written with about one pen. Pure functions on NumPy arrays (OpenCV
for contours and distances), for the piece-picking and the crop in `app.images.normalise`.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SIDE = 40  # smaller marks are left as they are: at MNIST's size a 2's base is a straight line,
# and strokes are the width they were drawn at MNIST's own size
MIN_RECTANGLE = 0.93  # a frame fills 93 % of the smallest turned rectangle around it (a 0: < 0.9)
ON_RECTANGLE = 0.9  # and 90 % of its outline lies on that rectangle's sides
FRAME_INK = 0.85  # its line: the outermost rings of depth that are (nearly) all ink
MAX_RIM = 0.15  # a rim deeper than 15 % of the box's shorter side is a solid blob, not a frame
MIN_HOLLOW = 0.3  # inside the rim at least 30 % of the box is left...
MAX_INSIDE_INK = 0.75  # ...and at most 3/4 of it is ink (a digit filling a tight box)
MIN_INSIDE_INK = 0.02  # an empty box (nothing in it, 2 % of its inside or less) is left alone
LINE_SPAN = 0.8  # an underline runs along at least 80 % of the marks' width
LINE_SLOPE = np.tan(np.radians(10))  # within 10 degrees of level (the base of a 2 slopes more)
LINE_FIT = 0.04  # the marks' lowest edge stays within 4 % of their height of a straight line
MAX_LINE_THICKNESS = 0.1  # it is at most a 10th of the marks' height thick
MIN_ABOVE = 0.3  # what is above it is at least 30 % of the ink
OTHER_PEN = 0.5  # ...or is drawn with another pen, at most half as thick as the digit's strokes
SEPARATE_REACH = 0.6  # a line apart from the digit is at least 60 % of the digit's width
TOUCHING_REACH = 0.15  # a line the digit touches runs on past where it touches, both ways, by 15 %

# Stroke width, as the mean width in px of a digit whose longer side is 20 px (`stroke_width`):
# on 4,000 MNIST training digits (scaled 8x, bilinear) the median is 2.21, and 1 in 500 is outside
# 1.0 to 5.0 (the 0.15th and 99.8th percentiles).
MNIST_THIN, MNIST_WIDTH, MNIST_THICK = 1.0, 2.21, 5.0
MEASURE_SIDE = 160
STROKE_LEVEL = 0.5  # strokes are where the ink passes half of its peak
DIGIT_BOX = 20


def frame_or_underline(marks: np.ndarray) -> np.ndarray | None:
    """The pixels of a box around the rest of `marks` (and what is outside it), or of a line under
    them; None if neither.

    `marks` is the boolean mask of the ink picked as the digit, cropped to it; the caller drops
    what comes back and picks again, so a box with an underlined digit in it takes two calls.
    """
    if max(marks.shape) < MIN_SIDE:
        return None
    found = _frame(marks)
    return found if found is not None else _underline(marks)


def _frame(marks: np.ndarray) -> np.ndarray | None:
    """A closed, hollow, rectangular outline with ink inside it (a 0 is hollow but empty).

    The outline's rim is measured in rings of equal depth from its edge: the rings that are mostly
    ink are the frame's line, however thick it is drawn and however the box is turned.
    """
    if min(marks.shape) < 8:
        return None
    padded = np.pad(marks, 1).astype(np.uint8)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    rectangle = cv2.minAreaRect(outline)
    side_a, side_b = rectangle[1]
    if cv2.contourArea(outline) < MIN_RECTANGLE * side_a * side_b:
        return None
    if not _on_sides(outline.reshape(-1, 2).astype(np.float32), rectangle):
        return None
    filled = np.zeros_like(padded)
    cv2.drawContours(filled, [outline], -1, 1, thickness=cv2.FILLED)
    area = float(filled.sum())
    depth = cv2.distanceTransform(filled, cv2.DIST_L2, 3)
    rings = np.minimum(depth, 255).astype(np.int64)
    per_ring = np.bincount(rings.ravel(), minlength=256)
    ink_per_ring = np.bincount(rings.ravel(), padded.ravel().astype(np.float64), minlength=256)
    share = ink_per_ring[1:] / np.maximum(per_ring[1:], 1)
    thin = np.flatnonzero(share < FRAME_INK)
    rim = int(thin[0]) if thin.size else len(share)  # rings 1..rim are the frame's line
    if rim == 0 or rim > MAX_RIM * min(side_a, side_b):
        return None
    inside = depth > rim + 1
    inside_area = float(inside.sum())
    inside_ink = float(np.count_nonzero(inside & (padded > 0)))
    if inside_area < MIN_HOLLOW * area or inside_ink > MAX_INSIDE_INK * inside_area:
        return None
    if inside_ink < MIN_INSIDE_INK * inside_area:
        return None
    return ((depth <= rim + 2) | (filled == 0))[1:-1, 1:-1]  # its faint edges, what is outside


def _on_sides(points: np.ndarray, rectangle) -> bool:
    """Whether most outline points lie on the rectangle's sides (within 3 % of its size)."""
    corners = cv2.boxPoints(rectangle)
    tolerance = max(1.5, 0.03 * min(rectangle[1]))
    near = np.zeros(len(points), dtype=bool)
    for start, end in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        along = end - start
        length = float(np.hypot(*along))
        if length > 0:
            offset = points - start
            near |= np.abs(along[0] * offset[:, 1] - along[1] * offset[:, 0]) <= tolerance * length
    return float(near.mean()) >= ON_RECTANGLE


def _underline(marks: np.ndarray) -> np.ndarray | None:
    """A straight, thin, nearly level line that is the lowest ink along most of the marks' width,
    with the digit above it: either apart from it, or touching it and reaching past it."""
    height, width = marks.shape
    if height < 8 or width < 8:
        return None
    has_ink = marks.any(axis=0)
    columns = np.flatnonzero(has_ink)
    lowest = height - 1 - np.argmax(marks[::-1, columns], axis=0)  # the lowest ink per column
    tolerance = max(1.5, LINE_FIT * height)
    on_line = np.ones(columns.size, dtype=bool)
    for _ in range(3):  # fit, drop the columns where the digit's own curve is lowest, refit
        if np.count_nonzero(on_line) < LINE_SPAN * width:
            return None
        slope, offset = np.polyfit(columns[on_line], lowest[on_line], 1)
        on_line = np.abs(lowest - (slope * columns + offset)) <= tolerance
    span = columns[on_line]
    if abs(slope) > LINE_SLOPE or span.max() - span.min() + 1 < LINE_SPAN * width:
        return None
    runs = _runs_up(marks, span, lowest[on_line])
    thickness = float(np.median(runs))
    if thickness > MAX_LINE_THICKNESS * height:
        return None
    rows, cols = np.mgrid[0:height, 0:width]
    below_fit = (slope * cols + offset) - rows  # > 0 above the fitted lowest edge
    line = marks & (below_fit <= thickness + 1) & (cols >= span.min()) & (cols <= span.max())
    above = marks & ~line
    if np.count_nonzero(above) < MIN_ABOVE * np.count_nonzero(marks):
        return None
    above_cols = np.flatnonzero(above.any(axis=0))
    digit_width = int(above_cols.max()) - int(above_cols.min()) + 1
    contacts = np.flatnonzero((_grown(line) & above).any(axis=0))
    if contacts.size:
        reach = TOUCHING_REACH * (span.max() - span.min() + 1)
        past = span.min() <= contacts.min() - reach and span.max() >= contacts.max() + reach
        other_pen = thickness <= OTHER_PEN * _pen_width(above)
        if not (past or other_pen):
            return None  # the base of a 2 (the digit meets it at its end), not a line under it
    elif span.max() - span.min() + 1 < SEPARATE_REACH * digit_width:
        return None
    return line


def _runs_up(marks: np.ndarray, columns: np.ndarray, lowest: np.ndarray) -> np.ndarray:
    """For each column, how many ink pixels run up without a gap from its lowest ink pixel."""
    cut = marks[:, columns]
    rows = np.arange(marks.shape[0])[:, None]
    gaps = ~cut & (rows <= lowest[None, :])
    last_gap = np.where(gaps, rows, -1).max(axis=0)
    return lowest - last_gap


def _pen_width(mask: np.ndarray) -> float:
    """The mean width in px of the strokes in a mask: twice their area over their outline."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    outline = sum(cv2.arcLength(contour, True) for contour in contours)
    return 2.0 * float(np.count_nonzero(mask)) / outline if outline else 0.0


def _grown(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def stroke_width(digit: np.ndarray) -> float:
    """The strokes' mean width as if the digit's longer side were 20 px: twice the strokes'
    area over their outline's length (a long stroke of width w has area wL and outline 2L),
    measured with the longer side at 160 px, as the MNIST figures above were."""
    scale = MEASURE_SIDE / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    digit = cv2.resize(digit.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    pixels = _pen_width(digit > STROKE_LEVEL * float(digit.max()))
    return pixels * DIGIT_BOX / max(digit.shape) if pixels else MNIST_WIDTH


def like_mnist_strokes(digit: np.ndarray) -> np.ndarray:
    """The cropped digit with strokes thinner (or thicker) than 499 of 500 MNIST digits' brought to
    MNIST's median width; every other digit comes back as it is.

    The strokes are grown (or shrunk) by a round pen of the width they lack; as the crop grows
    with them, the growth is solved for the width they will have once scaled to 20 px.
    """
    if max(digit.shape) < MIN_SIDE:
        return digit  # drawn at MNIST's own size: as MNIST's were
    width = stroke_width(digit)
    if MNIST_THIN <= width <= MNIST_THICK:
        return digit
    side = max(digit.shape)
    share = MNIST_WIDTH / DIGIT_BOX
    pixels_now = width * side / DIGIT_BOX
    grow = (share * side - pixels_now) / (2.0 * (1.0 - share))  # < 0: shrink
    radius = round(abs(grow))
    if radius == 0:
        return digit
    pen = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    if grow > 0:
        padded = np.pad(digit.astype(np.float32), radius)
        changed = cv2.dilate(padded, pen)
    else:
        changed = cv2.erode(digit.astype(np.float32), pen)
        if not (changed > 0).any():
            return digit
    rows, cols = np.nonzero(changed > 0)
    return changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
