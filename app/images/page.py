"""Finding the page in a photo: a note on a desk, a card, a board on a wall.

The normaliser takes the bulk of the picture for paper. That fails when the paper is only part
of the picture: a note on a darker desk leaves the desk as the bulk, and the note reads as a
bright blob of "ink". A page is a region of one clear tone (brighter than its surroundings, or
darker for a board), shaped like a sheet (a possibly turned rectangle), holding the marks. When
one covers less than half of the picture it is cut out, turned upright, and everything around it
is painted over with the page's own tone, and the page says which way round the ink is. Larger
pages are left to the normaliser as they are: there the paper is the bulk already.

Pure functions on float greyscale arrays in [0, 1], with OpenCV for thresholds and contours.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

LOOK_SIDE = 160  # the page is looked for at this size: its outline is far coarser than a stroke
MIN_PAGE = 0.03  # a page smaller than 3 % of the picture is a mark, not a page
MAX_PAGE = 0.5  # a page over half of the picture is the bulk already: nothing to cut out,
MAX_ENCLOSED = 0.95  # unless the desk is all round it (a shadow or the dark of a vignette is not)
MIN_SHEET = 0.85  # a page fills at least 85 % of the smallest turned rectangle around it
MIN_CONTRAST = 0.12  # the page's tone and its surroundings' differ by this much at least
MIN_MARKS = 0.001  # the marks on it are at least a thousandth of the picture...
MAX_MARKS = 0.3  # ...and at most 30 % of it: more is a thick digit or a box around one, not a page
BEYOND = 0.25  # a page has no tones beyond its own (away from its surroundings) by a quarter of
MAX_BEYOND = 0.002  # the contrast, but for a 500th of it: paper is the lightest thing on it
MAX_MARKS_AROUND = 0.25  # marks around it, a quarter of its own or more: it is no page
MAX_TURN = 30.0  # a page turned more than this is left turned: which side is up is unclear
EDGE_INSET = 0.02  # the page's outline is pulled in by 2 % of its size, away from its shadow


@dataclass(frozen=True)
class Page:
    """The page cut out of the picture, upright, its surroundings painted in its tone."""

    image: np.ndarray  # float32 greyscale in [0, 1]
    dark_ink: bool  # a light page (paper): the ink is darker than it; False for a board


def find_page(grey: np.ndarray) -> Page | None:
    """The page holding the marks when it is clearly set apart and under half of the picture.

    The picture is split into its light and dark tones (Otsu); in each, the largest connected
    region with its holes filled is a candidate page, its holes the marks. A candidate is the page
    when it is sheet-shaped, holds marks, and its tone differs clearly from what surrounds it.
    None when there is no such page (a page that fills the picture, a blank note, a vignette).
    """
    height, width = grey.shape
    scale = LOOK_SIDE / max(height, width)
    if scale >= 1.0:
        return None  # MNIST-sized images and icons have no desk around them
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)  # float32: no full-size copy
    small = np.rint(small * np.float32(255)).astype(np.uint8)
    threshold, light = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    found = [
        outline
        for is_light in (True, False)
        if (outline := _candidate(small, light.astype(bool) == is_light, is_light)) is not None
    ]
    if not found:
        return None
    area, outline, is_light = max(found, key=lambda candidate: candidate[0])
    return _cut_out(grey, outline / scale, is_light)


def _candidate(
    small: np.ndarray, tone: np.ndarray, is_light: bool
) -> tuple[float, np.ndarray, bool] | None:
    """(area, outline, is_light) of the largest region of `tone` if it passes for a page."""
    if np.count_nonzero(tone) < MIN_PAGE * small.size:
        return None
    region, filled, outline = _largest_filled(tone)
    page_area = float(filled.sum())
    picture = float(small.size)
    enclosed = not (
        filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any()
    )
    largest_page = MAX_ENCLOSED if enclosed else MAX_PAGE
    if not MIN_PAGE * picture <= page_area < largest_page * picture:
        return None
    (_, _), (side_a, side_b), _ = cv2.minAreaRect(outline)
    if page_area < MIN_SHEET * side_a * side_b:
        return None
    marks = filled.astype(bool) & ~region.astype(bool)
    if not MIN_MARKS * picture <= float(marks.sum()) <= MAX_MARKS * page_area:
        return None
    tones = small[region.astype(bool)].astype(np.float32)
    paper = float(np.median(tones))
    around = float(np.median(small[~filled.astype(bool)]))
    contrast = abs(paper - around)
    if contrast < MIN_CONTRAST * 255 or (paper > around) != is_light:
        return None
    beyond = tones - paper if is_light else paper - tones
    if np.count_nonzero(beyond > BEYOND * contrast) > MAX_BEYOND * tones.size:
        return None  # ink as dark as the "page" and darker: a shadow over paper, not a board
    if _marks_around(~tone, filled) > MAX_MARKS_AROUND * float(marks.sum()):
        return None  # what surrounds it is written on too: the paper, and this a printed block
    return page_area, outline.reshape(-1, 2).astype(np.float32), is_light


def _largest_filled(tone: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest connected region of a mask (uint8), it with its holes filled, its outline."""
    count, labels = cv2.connectedComponents(tone.astype(np.uint8), connectivity=8)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=count)[1:]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, [outline], -1, 1, thickness=cv2.FILLED)
    return region, filled, outline


def _marks_around(other: np.ndarray, page: np.ndarray) -> float:
    """How many pixels of marks the page's surroundings hold: the holes in the largest region of
    the other tone, less the page itself (and a pixel round it)."""
    if not other.any():
        return 0.0
    region, filled, _ = _largest_filled(other)
    near_page = cv2.dilate(page, np.ones((3, 3), np.uint8)).astype(bool)
    return float(np.count_nonzero(filled.astype(bool) & ~region.astype(bool) & ~near_page))


def _cut_out(grey: np.ndarray, outline: np.ndarray, is_light: bool) -> Page:
    """The page's turned rectangle straightened into an upright image, outside it its paper tone.

    The outline's own shape (not its rectangle) decides what is page: a corner cut off by the
    picture's edge stays cut off, and painted over like the desk.
    """
    mask = np.zeros(grey.shape, np.uint8)
    cv2.fillPoly(mask, [np.rint(outline).astype(np.int32)], 1)
    (centre_x, centre_y), (side_a, side_b), angle = cv2.minAreaRect(outline)
    inset = max(1, round(EDGE_INSET * min(side_a, side_b)))
    mask = cv2.erode(mask, np.ones((2 * inset + 1, 2 * inset + 1), np.uint8)).astype(bool)
    paper = float(np.median(grey[mask])) if mask.any() else float(np.median(grey))
    painted = np.where(mask, grey, np.float32(paper)).astype(np.float32)
    turn = _upright_turn(angle)
    if abs(turn) > MAX_TURN:
        turn = 0.0
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if turn == 0.0:
        return Page(painted[top:bottom, left:right], dark_ink=is_light)
    size = (round(max(side_a, side_b)) + 2, round(max(side_a, side_b)) + 2)
    rotation = cv2.getRotationMatrix2D((float(centre_x), float(centre_y)), turn, 1.0)
    rotation[:, 2] += np.array(size) / 2 - np.array([centre_x, centre_y])
    upright = cv2.warpAffine(
        painted,
        rotation,
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=paper,
    )
    return Page(upright, dark_ink=is_light)


def _upright_turn(angle: float) -> float:
    """The smallest turn (degrees, counter-clockwise) that makes a rectangle at `angle` upright."""
    return (angle + 45.0) % 90.0 - 45.0
