"""The hand-written greyscale PNG encoder: Pillow reads back exactly the pixels that went in."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.images.png import grey_png, grid_png, to_png


@pytest.mark.parametrize("shape", [(32, 32), (1, 1), (32, 140), (70, 33)])
def test_pillow_reads_back_the_exact_pixels(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    png = grey_png(pixels)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "L" and image.size == (shape[1], shape[0])
        assert np.array_equal(np.asarray(image), pixels)


def test_to_png_rounds_and_clamps_like_before():
    values = torch.linspace(-0.5, 1.5, 32 * 32).reshape(1, 32, 32)
    expected = values.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()[0]
    with Image.open(io.BytesIO(to_png(values))) as image:
        assert np.array_equal(np.asarray(image), expected)


def test_one_image_grid_is_the_image_itself_and_a_grid_is_padded():
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert grid_png(images[:1], nrow=1) == to_png(images[0])
    with Image.open(io.BytesIO(grid_png(images, nrow=2))) as grid:
        assert grid.size == (2 + 2 * 34, 2 + 2 * 34)
