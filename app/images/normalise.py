"""An uploaded image remade the way MNIST was made: what the model sees, float32 [1, 32, 32].

The model only knows MNIST: a white digit on black, its longer side 20 px, placed in 28x28 by its
centre of mass, here padded to 32x32. People upload photos of dark ink on paper, big canvases and
transparent PNGs. These are pure functions on an image `app.images.upload` has opened and checked;
every failure leaves as a `ServiceError` with its HTTP status, never as a decoder's exception.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from app.errors import ImageError
from app.images.page import find_page
from app.images.strokes import frame_or_underline, like_mnist_strokes
from app.images.upload import MAX_SIDE, open_upload

MNIST_SIDE = 28
MODEL_SIDE = 32
DIGIT_SIDE = 20
WORK_SIDE = 1024  # big photos are analysed at about this size; the digit ends up 20 px anyway
MIN_INK_CONTRAST = 0.1  # less than this between paper and ink is a blank image, not a digit
CROP_FRACTION = 0.25  # ink fainter than this share of the darkest stroke is noise, not the digit
PAPER_FRACTION = 0.1  # the faintest tenth of the ink's range is paper tone and JPEG ringing
RIM_FRACTION = 0.02  # ...unless it touches a stroke: the faint antialiased rim is part of the digit
BACKGROUND_FRACTION = 6  # the paper's light is estimated in squares a 6th of the image wide
MIN_BACKGROUND_SIDE = 21  # smaller images (MNIST, icons) have no lighting to take out
MIN_LIGHT = 0.1  # paper darker than this is too dark to tell ink from noise by dividing
LINE_SPAN = 0.9  # a piece of ink reaching across 90 % of the image...
LINE_THICKNESS = 0.04  # ...and thinner than 4 % of its length is an edge or a ruled line
INSIDE_MASS = 0.2  # ink inside the frame wins unless it is a speck beside what touches the frame
GROUP_GAP = 0.25  # strokes within a quarter of the digit's size of it belong to it
NO_DIGIT = (
    "No digit found in the image: the only marks in it are long lines or edges across it (a"
    " shadow, the page's edge, ruled lines). Photograph the digit in even light, filling"
    " more of the picture, or crop the photo to the digit."
)
PADDING = (MODEL_SIDE - MNIST_SIDE) // 2


def normalize_upload(
    data: bytes,
    *,
    preprocess: bool = True,
    max_bytes: int = 5 * 1024 * 1024,
    max_pixels: int = MAX_SIDE * MAX_SIDE,
) -> np.ndarray:
    """Decodes an uploaded image into what the model sees: float32 [1, 32, 32] in [0, 1].

    With `preprocess`, MNIST's recipe: EXIF orientation, alpha onto a contrasting background,
    greyscale, the page found when it is only part of the picture (a note on a desk, a board;
    `app.images.page`), inversion when the paper is lighter than the ink, the paper's tone and light
    (shadows, the desk) removed, the digit picked among the pieces of ink (lines and edges across
    the image, a box round it or a line under it are not strokes; `app.images.strokes`) and cropped,
    far-off stroke widths brought to MNIST's, longer side scaled to 20 px, placed in 28x28 by
    centre of mass, padded to 32. An image with no ink in it (blank paper, one flat colour) comes
    back all black, so a caller still gets an answer and can see what the model saw.

    Without it the image is taken as already MNIST-like: greyscale, 28x28 padded to 32x32, 32x32
    as is, and any other size stretched to 28x28 (aspect not kept, antialiased) and padded.

    Raises PayloadTooLarge (413) past `max_bytes`, `max_pixels` or 4096 px a side, all read from
    the header before decoding; UnsupportedImageFormat (415) for a real image in another format;
    ImageError (422) for anything that is not a decodable image, and for a photo whose only
    marks are lines across it (a shadow's or the page's edge, ruled lines): no digit to show.
    """
    image = open_upload(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return normalize(image, preprocess=preprocess)


def normalize(image: Image.Image, *, preprocess: bool = True) -> np.ndarray:
    """`normalize_upload` of an image `open_upload` has opened (and checked): the decode.

    Closes `image`: its decoded pixels (67 MB for a 4096x4096 RGBA upload) are freed here, on the
    decode thread, before the decode gate hands freed memory back to the OS, rather than later
    with the request. `grey` is always a new image (Pillow's `convert` copies even to its mode).
    """
    try:
        grey = _decode_grey(image, preprocess=preprocess)
    finally:
        image.close()
    field = np.pad(_mnist_digit(grey), PADDING) if preprocess else _as_model_input(grey)
    return np.clip(field, 0.0, 1.0).astype(np.float32)[None]


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
    """Applies the EXIF orientation; a broken EXIF block leaves the image as stored.

    In place: otherwise Pillow answers an image without an orientation with a full copy (67 MB
    for a 4096x4096 RGBA upload)."""
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _greyscale(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode != "F" or values.max() > 1.0 else 1.0
        return _to_image(values / max(scale, float(values.max())))
    if not image.has_transparency_data:
        return image.convert("L")
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    grey = np.asarray(rgba.convert("L"))
    alpha = np.asarray(rgba.getchannel("A"))
    background = _contrasting_background(grey, alpha)
    out = np.empty_like(grey)
    for rows in _bands(len(grey)):  # float32 a band at a time: a 4096x4096 upload needed 500 MB
        g = grey[rows].astype(np.float32) / 255.0
        a = alpha[rows].astype(np.float32) / 255.0
        out[rows] = _to_levels(g * a + background * (1.0 - a))
    return Image.fromarray(out)


BAND_ROWS = 256


def _bands(height: int) -> list[slice]:
    return [slice(top, top + BAND_ROWS) for top in range(0, height, BAND_ROWS)]


def _to_levels(grey: np.ndarray) -> np.ndarray:
    return (np.clip(grey, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_image(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(_to_levels(grey))


def _contrasting_background(grey: np.ndarray, alpha: np.ndarray) -> float:
    """White behind dark strokes, black behind light ones: transparency is always background.
    `grey` and `alpha` are 8-bit levels; summed a band at a time, in float64."""
    weight = stroke = 0.0
    for rows in _bands(len(grey)):
        a = alpha[rows].astype(np.float32) / 255.0
        weight += float(a.sum(dtype=np.float64))
        stroke += float((grey[rows].astype(np.float32) / 255.0 * a).sum(dtype=np.float64))
    mean = stroke / weight if weight > 0 else 0.0
    return 1.0 if mean < 0.5 else 0.0


def _mnist_digit(grey: Image.Image) -> np.ndarray:
    """MNIST's recipe from greyscale: ink made white on black, cropped, 20 px, centred in 28x28."""
    work = np.asarray(_smooth(_shrink(grey)), dtype=np.float32) / 255.0
    page = find_page(work)  # a note on a desk, a board on a wall: the page, not the picture
    ink = _ink(work) if page is None else _ink(page.image, dark_ink=page.dark_ink)
    digit = _digit_region(ink)
    if digit is None:
        return np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.float32)
    digit = like_mnist_strokes(digit)  # a fine pen or a thick marker: MNIST's pen width
    return _place_by_centre_of_mass(_scale_longer_side(digit, DIGIT_SIDE))


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


def _ink(grey: np.ndarray, *, dark_ink: bool | None = None) -> np.ndarray:
    """Makes the ink white on black and stretches it so the paper is 0 and the darkest ink 1.

    Paper is the bulk of the image, so its level is the median; ink is the extreme furthest from
    it, so a vignetted or unevenly lit page cannot outweigh a thin stroke. After the light is
    taken out, the paper is what fills the border: its median plus three robust standard
    deviations (or a tenth of the ink's range, whichever is more) becomes 0, unless the border is
    perfectly flat, as in MNIST or a drawing. Median and MAD still hold when a tightly cropped
    digit hits the edges. `dark_ink`, when the page has been found, says which way round it is.
    """
    if dark_ink is None:
        paper = float(np.median(grey))
        dark_ink = paper - float(grey.min()) > float(grey.max()) - paper
    if dark_ink:
        grey = 1.0 - grey
    grey = _remove_light(grey, reflective=dark_ink)
    border = _border(grey)
    level = float(np.median(border))
    peak = float(grey.max())
    spread = 3 * 1.4826 * float(np.median(np.abs(border - level)))
    clean = float(border.max()) == level  # a drawn or MNIST image: faint pixels are antialiasing
    floor = level if clean else level + max(spread, PAPER_FRACTION * (peak - level))
    if peak - floor < MIN_INK_CONTRAST:
        return np.zeros_like(grey)
    return np.clip((grey - floor) / (peak - floor), 0.0, 1.0)


_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)  # diagonal pixels touch: one stroke


def _remove_light(ink: np.ndarray, *, reflective: bool) -> np.ndarray:
    """Takes the paper's light out, so shadows, uneven lighting and the desk are not ink.

    The paper under the ink is the image opened (eroded, then dilated) with a square wider than
    any stroke: strokes vanish from it, while a shadow or a desk, wider than the square, keeps its
    level right up to its edge, sharp or soft; light and shade come from outside the frame, so the
    paper is nowhere darker than the darkest paper along the border (a drawing's tight knot of
    strokes stays ink). What stands above it is ink. On paper (dark ink) that is divided by the
    paper's own brightness, which is the light falling there, so a stroke in a shadow is as strong
    as one in the light. MNIST-sized images are left alone.
    """
    side = max(ink.shape) // BACKGROUND_FRACTION
    if side < MIN_BACKGROUND_SIDE:
        return ink
    levels = np.rint(ink * 255.0).astype(np.uint8)  # exact: the image has 8-bit levels; faster
    paper = grey_opening(levels, side) / np.float32(255.0)
    paper = np.minimum(paper, _border(paper).max())  # strokes are never paper, even dense ones
    strokes = ink - paper
    if reflective:
        strokes /= np.maximum(1.0 - paper, MIN_LIGHT)
    return strokes


def grey_opening(levels: np.ndarray, side: int) -> np.ndarray:
    """`ndimage.grey_opening(levels, size=(side, side), mode="nearest")`, the same bytes, by
    OpenCV at a tenth of the cost (the largest step of a photo's normalisation); the anchors
    mirror scipy's origins, which differ between erosion and dilation for an even side."""
    square = np.ones((side, side), np.uint8)
    low, high = side // 2, side - 1 - side // 2
    eroded = cv2.erode(levels, square, anchor=(low, low), borderType=cv2.BORDER_REPLICATE)
    return cv2.dilate(eroded, square, anchor=(high, high), borderType=cv2.BORDER_REPLICATE)


def _border(grey: np.ndarray) -> np.ndarray:
    """The outer ring, a 30th of the shorter side thick (at least one pixel)."""
    ring = max(1, min(grey.shape) // 30)
    mask = np.ones(grey.shape, dtype=bool)
    mask[ring:-ring, ring:-ring] = False
    return grey[mask]


def _digit_region(ink: np.ndarray, *, tidy: int = 2) -> np.ndarray | None:
    """The digit's crop of the ink, other ink blanked, darkest stroke 1; None for a blank image.

    Strokes are what passes a quarter of the darkest ink; each connected piece is a candidate,
    except lines that run across the image (a shadow's or the page's edge, a ruled line). Pieces
    that touch the frame (the desk, a shadow's ragged edge) give way to pieces inside it, as in a
    photo of a page; only a digit cropped tightly fills the frame. The digit is the heaviest
    candidate, weighted towards the middle, with the candidates close to it (a 4 or a 5 drawn in
    several strokes). Their faint antialiased rims count too, but faint specks away from any
    stroke (grain, dust, noise) do not. A box drawn around the digit, or a line under it, is
    dropped and the digit picked again, `tidy` times at most (a box with an underlined digit).

    Raises ImageError (422) when there is ink but all of it is lines across the image.
    """
    peak = float(ink.max())
    if peak <= 0.0:
        return None
    labels, count = ndimage.label(ink > CROP_FRACTION * peak, structure=_EIGHT_NEIGHBOURS)
    slices = ndimage.find_objects(labels)
    boxes = np.array([(y.start, y.stop, x.start, x.stop) for y, x in slices], dtype=np.int64)
    strokes = np.flatnonzero(labels)  # a few % of the image: count only those
    areas = np.bincount(labels.ravel()[strokes], minlength=count + 1)[1:]
    masses = np.bincount(labels.ravel()[strokes], ink.ravel()[strokes], minlength=count + 1)[1:]
    candidates = ~_lines_across(boxes, areas, ink.shape)
    if not candidates.any():
        raise ImageError(NO_DIGIT)
    inside = candidates & ~_touching_frame(boxes, ink.shape)
    if not inside.any() or masses[inside].max() < INSIDE_MASS * masses[candidates].max():
        inside = candidates  # a tightly cropped digit: the frame is the digit's own box
    chosen = _group(boxes, inside, _heaviest_near_middle(boxes, masses, inside, ink.shape))
    top, bottom = int(boxes[chosen, 0].min()), int(boxes[chosen, 1].max())
    left, right = int(boxes[chosen, 2].min()), int(boxes[chosen, 3].max())
    top, left = max(top - 1, 0), max(left - 1, 0)  # and the rim just outside the strokes
    box = (slice(top, bottom + 1), slice(left, right + 1))
    kept = np.zeros(count + 1, dtype=bool)  # by label: a lookup, much cheaper than np.isin
    kept[1:] = chosen
    if tidy and (not_digit := frame_or_underline(kept[labels[box]])) is not None:
        cleaned = ink.copy()
        cleaned[box][_grow_by_one(not_digit)] = 0.0
        if not (cleaned > CROP_FRACTION * peak).any():
            raise ImageError(NO_DIGIT)
        return _digit_region(cleaned, tidy=tidy - 1)
    near_strokes = _grow_by_one(kept[labels[box]])
    digit = np.where(near_strokes & (ink[box] > RIM_FRACTION * peak), ink[box], 0.0)
    rows, cols = np.nonzero(digit)
    digit = digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return digit / float(digit.max())


def _grow_by_one(mask: np.ndarray) -> np.ndarray:
    """A boolean mask grown by one pixel in all eight directions."""
    return ndimage.binary_dilation(mask, structure=_EIGHT_NEIGHBOURS)


def _lines_across(boxes: np.ndarray, areas: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pieces that reach across most of the image and are thin for their length: not strokes."""
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    across = (heights >= LINE_SPAN * shape[0]) | (widths >= LINE_SPAN * shape[1])
    length = np.maximum(heights, widths).astype(np.float64)
    return across & (areas < LINE_THICKNESS * length**2)


def _touching_frame(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return (
        (boxes[:, 0] == 0)
        | (boxes[:, 2] == 0)
        | (boxes[:, 1] == shape[0])
        | (boxes[:, 3] == shape[1])
    )


def _heaviest_near_middle(
    boxes: np.ndarray, masses: np.ndarray, candidates: np.ndarray, shape: tuple[int, int]
) -> int:
    """The candidate with the most ink, ink far from the middle counting for less."""
    centre_y = (boxes[:, 0] + boxes[:, 1]) / 2 / shape[0] - 0.5
    centre_x = (boxes[:, 2] + boxes[:, 3]) / 2 / shape[1] - 0.5
    weight = 1.0 / (1.0 + (centre_y**2 + centre_x**2) / 0.125)
    return int(np.argmax(np.where(candidates, masses * weight, -1.0)))


def _group(boxes: np.ndarray, candidates: np.ndarray, main: int) -> np.ndarray:
    """The main candidate plus every candidate within a quarter of the group's size of it."""
    chosen = np.zeros(len(boxes), dtype=bool)
    chosen[main] = True
    while True:
        top, bottom = boxes[chosen, 0].min(), boxes[chosen, 1].max()
        left, right = boxes[chosen, 2].min(), boxes[chosen, 3].max()
        reach = GROUP_GAP * max(bottom - top, right - left)
        gap_y = np.maximum(np.maximum(boxes[:, 0] - bottom, top - boxes[:, 1]), 0)
        gap_x = np.maximum(np.maximum(boxes[:, 2] - right, left - boxes[:, 3]), 0)
        near = candidates & ~chosen & (np.maximum(gap_y, gap_x) <= reach)
        if not near.any():
            return chosen
        chosen |= near


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
