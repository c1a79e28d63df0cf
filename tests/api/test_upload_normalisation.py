"""A photo-like upload: an MNIST test digit drawn dark-on-light on a 300x300 canvas, off-centre.

After normalisation the model should see the same digit: its latent lands next to the original
28x28 digit's latent, and its reconstruction looks like that digit more than like any other class.
This needs a well-trained model, so it uses the shipped checkpoint.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DIGITS = [f"{label}-1" for label in range(10)]
PAPER, INK = 235, 40  # grey levels of the paper and of the darkest ink


def drawn_on_paper(digit_png: bytes, offset: tuple[int, int]) -> bytes:
    """Scales the digit to 160 px and draws it as dark-grey ink on light paper, off-centre."""
    digit = Image.open(io.BytesIO(digit_png)).convert("L").resize((160, 160), Image.BILINEAR)
    ink = np.asarray(digit, dtype=np.float32) / 255.0
    paper = Image.new("L", (300, 300), PAPER)
    paper.paste(Image.fromarray((PAPER - (PAPER - INK) * ink).astype(np.uint8)), offset)
    buffer = io.BytesIO()
    paper.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(b64_png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64_png))), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def example_latents(good_client) -> dict[str, np.ndarray]:
    ids = [e["id"] for e in good_client.get("/examples").json()["examples"]]
    return {
        i: np.array(good_client.get("/encode", params={"example": i}).json()["mu"]) for i in ids
    }


@pytest.mark.parametrize("example_id", DIGITS)
def test_latent_of_the_drawn_digit_is_close_to_the_original(
    good_client, example_latents, example_id
):
    original_png = good_client.get(f"/examples/{example_id}.png").content
    upload = drawn_on_paper(original_png, offset=(120, 20))
    mu = np.array(
        good_client.post("/encode", files={"file": ("photo.png", upload, "image/png")}).json()["mu"]
    )
    original = example_latents[example_id]
    cosine = mu @ original / (np.linalg.norm(mu) * np.linalg.norm(original))
    assert cosine > 0.75
    label = example_id.split("-")[0]
    others = [z for i, z in example_latents.items() if not i.startswith(f"{label}-")]
    nearest_other = min(np.linalg.norm(mu - z) for z in others)
    assert np.linalg.norm(mu - original) < 0.75 * nearest_other


@pytest.mark.parametrize("example_id", DIGITS)
def test_reconstruction_of_the_drawn_digit_shows_that_digit(good_client, example_id):
    original_png = good_client.get(f"/examples/{example_id}.png").content
    upload = drawn_on_paper(original_png, offset=(15, 110))
    files = {"file": ("photo.png", upload, "image/png")}
    reconstruction = pixels(
        good_client.post("/reconstruct?format=json", files=files).json()["reconstruction"]
    )
    label = example_id.split("-")[0]
    distance_by_label: dict[str, float] = {}
    for example in good_client.get("/examples").json()["examples"]:
        digit = np.asarray(Image.open(io.BytesIO(good_client.get(example["url"]).content)))
        distance = float(np.linalg.norm(reconstruction[2:30, 2:30] - digit / 255.0))
        key = str(example["label"])
        distance_by_label[key] = min(distance, distance_by_label.get(key, np.inf))
    assert min(distance_by_label, key=distance_by_label.get) == label
