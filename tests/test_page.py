"""`find_page`: the page is found where it is only part of the picture, and nowhere else.

A note on a darker desk (or a sheet with the desk all round it), a card on a patterned cloth
and a board on a light wall hold the digit on part of the picture; an ordinary photo (the paper
is the bulk, with shadows, the desk's edge or ruled lines) has no page to cut out and is
normalised exactly as before.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.images.normalise import normalize_upload
from app.images.page import find_page
from harness import photo_scenes as scenes
from training.data import load_split


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("data", "mnist", train=False).images[:10].numpy()


def grey(photo: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(photo)).convert("L"), dtype=np.float32) / 255


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.stack([a.ravel(), b.ravel()]).astype(np.float64))[0, 1])


@pytest.mark.parametrize(
    ("scene", "dark_ink"),
    [(scenes.note_on_desk, True), (scenes.textured_page, True), (scenes.board_on_wall, False)],
)
def test_a_page_on_part_of_the_picture_is_found_and_says_which_way_the_ink_is(
    digits: np.ndarray, scene, dark_ink: bool
) -> None:
    for seed, digit in enumerate(digits):
        picture = grey(scene(digit, seed))
        page = find_page(picture)
        assert page is not None, seed
        assert page.dark_ink is dark_ink
        assert page.image.size < 0.8 * picture.size  # a third of the notes are big sheets
        assert page.image.dtype == np.float32


@pytest.mark.parametrize(
    "scene",
    [
        scenes.clean_page,
        lambda d, s: scenes.shadow_band(d, "left", s),
        lambda d, s: scenes.shadow_band(d, "top", s, depth=0.3, width=0.45),
        lambda d, s: scenes.page_edge(d, "right", s),
        scenes.ruled_page,
    ],
)
def test_an_ordinary_photo_has_no_page_to_cut_out(digits: np.ndarray, scene) -> None:
    """Shadows and desk edges are left to the normaliser, which handles them (issue 13)."""
    assert all(find_page(grey(scene(d, i))) is None for i, d in enumerate(digits))


def test_mnist_sized_images_are_never_searched(digits: np.ndarray) -> None:
    assert find_page(digits[0].astype(np.float32) / 255) is None


def test_a_note_turned_on_the_desk_comes_out_upright(digits: np.ndarray) -> None:
    """The note is turned by up to 12 degrees, the digit with it; straightened with the note,
    it matches the upright digit better than it would turned."""
    scores = []
    for seed, digit in enumerate(digits):
        seen = normalize_upload(scenes.note_on_desk(digit, seed))
        expected = F.pad(torch.from_numpy(digit).float() / 255, (2, 2, 2, 2))
        scores.append(correlation(seen, expected))
    assert np.median(scores) > 0.85, np.round(scores, 2)


def test_a_printed_dark_block_on_a_written_form_is_no_board(digits: np.ndarray) -> None:
    """A black header with white text holds light marks like a board, but the paper round it is
    written on too (the digit): the paper is the page, and the block is left to the normaliser."""
    from PIL import ImageDraw

    for seed, digit in enumerate(digits[:5]):
        rng = np.random.default_rng(seed)
        page = scenes._digit_reflectance(digit, rng, 200, (60, 0))
        page[20:110, 60:580] = 0.1
        text = Image.new("L", (scenes.WIDTH, scenes.HEIGHT), 0)
        ImageDraw.Draw(text).text((80, 40), "APPLICATION FORM  No. 1234", fill=255, font_size=40)
        lettering = np.asarray(text, np.float32) / 255
        page = page * (1 - lettering) + 0.85 * lettering
        photo = scenes._photograph(page.astype(np.float32), scenes._lighting(rng), rng)
        assert find_page(grey(photo)) is None
