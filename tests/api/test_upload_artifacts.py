"""Photos with shadows, page edges and ruled lines, through `/reconstruct` and the shipped model.

Each photo holds one MNIST test digit (one per class, none of them a bundled example) in a scene
from `harness/photo_scenes.py`. The reconstruction must be that digit: its five nearest neighbours
among 5000 other MNIST test digits (pixel distance, about 93 % right on reconstructions of clean
digits) vote for the digit's own label, and it looks like the reconstruction of the clean 28x28
digit. Digits whose clean reconstruction is already voted wrong are skipped for the next of their
class. Before the light was taken out and the digit picked among the pieces of ink, the shadow's
or the desk's edge was cropped with the digit, and every scene here but the ruled page failed.
The scenes of issue 20 (a note on a desk, a box, an underline, a fine pen, a card on a cloth)
failed until the page was found first, frames and underlines dropped and strokes widened.
This needs a well-trained model, so it uses the shipped checkpoint.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from harness import photo_scenes as scenes
from training.data import load_split, to_model_input

REPO = Path(__file__).resolve().parents[2]
FIRST_UNBUNDLED = 1000  # the bundled examples are the first ten of each class in the test set
NEIGHBOURS = slice(2000, 7000)  # the digits that vote on what a reconstruction shows

SCENES = {
    **{
        f"shadow-{side}": lambda d, s, side=side: scenes.shadow_band(d, side, s)
        for side in scenes.SIDES
    },
    **{
        f"page-edge-{side}": lambda d, s, side=side: scenes.page_edge(d, side, s)
        for side in scenes.SIDES
    },
    "ruled-page": scenes.ruled_page,
    "clean-page": scenes.clean_page,
}

# Issue 20: the paper is only part of the picture, or more than the digit is on it. Each seed is
# its own layout (the digit 120-220 px, anywhere, the paper or the marks turned by up to 12 or 6
# degrees); before the page was found, boxes and underlines dropped and fine strokes widened,
# 2, 11, 13, 9, 2 of these 20-photo sets and 1 of 10 boards were voted right (at 2adb00d).
PAGE_SCENES = scenes.PAGE_SCENES


@pytest.fixture(scope="module")
def mnist_test():
    return load_split(REPO / "data", "mnist", train=False)


@pytest.fixture(scope="module")
def vote(mnist_test):
    """`vote(image)`: the majority label of the 5 nearest of 5000 test digits, as 32x32 pixels."""
    references = to_model_input(mnist_test.images[NEIGHBOURS]).flatten(1).numpy()
    labels = mnist_test.labels[NEIGHBOURS].numpy()

    def majority(image: np.ndarray) -> int:
        distances = np.linalg.norm(references - image.reshape(1, -1), axis=1)
        return int(np.bincount(labels[distances.argsort()[:5]], minlength=10).argmax())

    return majority


@pytest.fixture(scope="module")
def one_digit_per_class(good_client, mnist_test, vote) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(label, uint8 28x28 digit, its clean reconstruction) for the first test digit of each
    class past the bundled ones whose clean reconstruction is voted its own label."""
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for index in range(FIRST_UNBUNDLED, NEIGHBOURS.start):
        label = int(mnist_test.labels[index])
        if label in found:
            continue
        digit = mnist_test.images[index].numpy()
        clean = pixels(reconstruct(good_client, png(digit), "digit.png")["reconstruction"])
        if vote(clean) == label:
            found[label] = (digit, clean)
        if len(found) == 10:
            break
    return [(label, *found[label]) for label in sorted(found)]


def reconstruct(client: TestClient, upload: bytes, name: str) -> dict:
    response = client.post("/reconstruct?format=json", files={"file": (name, upload)})
    assert response.status_code == 200, response.text
    return response.json()


def pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))), dtype=np.float32) / 255


def png(digit: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return buffer.getvalue()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("scene", SCENES)
def test_the_reconstruction_of_the_photo_is_the_digit(
    good_client, one_digit_per_class, vote, scene
):
    assert len(one_digit_per_class) == 10
    similarity = voted_and_alike(good_client, one_digit_per_class, vote, SCENES, scene)
    assert np.median(similarity) > 0.9 and min(similarity) > 0.6, np.round(similarity, 2)


def voted_and_alike(client, one_digit_per_class, vote, scenes, scene) -> list[float]:
    """Each digit photographed in `scene` and reconstructed: 9 of 10 voted right; the likeness
    of each reconstruction to the clean digit's."""
    labels, voted, similarity = [], [], []
    for seed, (label, digit, clean) in enumerate(one_digit_per_class):
        seen = reconstruct(client, scenes[scene](digit, seed), "photo.jpg")
        reconstruction = pixels(seen["reconstruction"])
        labels.append(label)
        voted.append(vote(reconstruction))
        similarity.append(correlation(reconstruction, clean))
    agreed = sum(v == label for v, label in zip(voted, labels, strict=True))
    assert agreed >= 9, f"{scene}: the digits {labels} were reconstructed as {voted}"
    return similarity


@pytest.mark.parametrize("scene", PAGE_SCENES)
def test_a_note_on_a_desk_a_box_an_underline_a_fine_pen_or_a_cloth_still_give_the_digit(
    good_client, one_digit_per_class, vote, scene
):
    """As above, 9 of 10 voted right; the likeness to the clean reconstruction is lower (median
    0.8) because these digits are turned and drawn with other pens: a fine pen's widened strokes
    are not the marker's of MNIST, and a digit turned with its box or line stays turned."""
    similarity = voted_and_alike(good_client, one_digit_per_class, vote, PAGE_SCENES, scene)
    assert np.median(similarity) > 0.8 and min(similarity) > 0.5, np.round(similarity, 2)


def test_a_photo_of_only_lines_and_a_shadow_is_refused_422(good_client):
    response = good_client.post(
        "/reconstruct", files={"file": ("lines.jpg", scenes.lines_only(0), "image/jpeg")}
    )
    assert response.status_code == 422
    assert "No digit found" in response.json()["detail"]
