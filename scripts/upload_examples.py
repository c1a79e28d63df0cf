"""Draws docs/api.md's upload examples: photos that work and photos that do not, each row the
photo, what the model saw and its reconstruction, all through `/reconstruct` and the shipped model.

    python scripts/upload_examples.py [--checkpoint models/mnist-vae.pt] [--out docs]

The photos are the seeded scenes of `harness/photo_scenes.py` with MNIST test digits, so the
pictures are the same on every run.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from harness import photo_scenes as scenes  # noqa: E402
from training.data import load_split  # noqa: E402

PHOTO = (240, 180)  # the photo's thumbnail
DIGIT = 128  # the model's 32x32 input and output, enlarged
CAPTION = 22


def two_digits(first: np.ndarray, second: np.ndarray) -> bytes:
    """Two digits side by side on one page: only one of them is reconstructed."""
    both = np.zeros((28, 56), dtype=np.uint8)
    both[:, :28], both[:, 28:] = first, second
    return scenes.clean_page(np.asarray(Image.fromarray(both).resize((28, 28))), seed=5)


def rows(digits: np.ndarray) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    works = [
        ("evenly lit page", scenes.clean_page(digits[0], seed=0)),
        ("shadow over a third of the page", scenes.shadow_band(digits[1], "left", seed=1)),
        ("shadow edge through the digit", scenes.shadow_band(digits[2], "top", 2, width=0.45)),
        ("page edge, desk beside it", scenes.page_edge(digits[3], "right", seed=3)),
        ("ruled page", scenes.ruled_page(digits[4], seed=4)),
        ("note on a darker desk, turned", scenes.note_on_desk(digits[5], seed=1)),
        ("card on a patterned cloth", scenes.textured_page(digits[6], seed=6)),
        ("chalk on a board, wall around it", scenes.board_on_wall(digits[7], seed=7)),
        ("digit in a printed box", scenes.boxed_digit(digits[8], seed=8)),
        ("underlined digit", scenes.underlined_digit(digits[9], seed=4)),
        ("fine pen, overexposed", scenes.faint_thin_ink(digits[0], seed=2)),
    ]
    fails = [
        ("shadow over most of the page", scenes.shadow_band(digits[5], "left", 5, width=0.6)),
        ("two digits on one page", two_digits(digits[6], digits[7])),
        ("only lines and a shadow: 422", scenes.lines_only(seed=0)),
        ("a ring round the digit", scenes.circled_digit(digits[3], seed=3)),
        ("a row of boxes on a form", scenes.row_of_boxes(digits[4], seed=4)),
        ("a blank note on a desk", scenes.blank_note(seed=1)),
    ]
    return works, fails


def sheet(client: TestClient, examples: list[tuple[str, bytes]]) -> Image.Image:
    height = PHOTO[1] + CAPTION
    canvas = Image.new(
        "RGB", (PHOTO[0] + 2 * DIGIT + 40, CAPTION + height * len(examples)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for x, title in (
        (4, "photo"),
        (PHOTO[0] + 20, "model saw"),
        (PHOTO[0] + DIGIT + 40, "reconstruction"),
    ):
        draw.text((x, 4), title, fill="black")
    for row, (caption, photo) in enumerate(examples):
        top = CAPTION + row * height
        thumbnail = Image.open(io.BytesIO(photo)).convert("RGB").resize(PHOTO)
        canvas.paste(thumbnail, (0, top))
        response = client.post("/reconstruct?format=json", files={"file": ("photo.jpg", photo)})
        if response.status_code == 200:
            body = response.json()
            for column, key in enumerate(("input", "reconstruction")):
                image = Image.open(io.BytesIO(base64.b64decode(body[key]))).convert("RGB")
                x = PHOTO[0] + 20 + column * (DIGIT + 20)
                canvas.paste(image.resize((DIGIT, DIGIT), Image.NEAREST), (x, top + 20))
        else:
            detail = response.json()["detail"]
            text = "\n".join(textwrap.wrap(f"{response.status_code}: {detail}", 44))
            draw.text((PHOTO[0] + 20, top + 10), text, fill="black")
        draw.text((4, top + PHOTO[1] + 4), caption, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    digits = load_split(REPO / "data", "mnist", train=False).images[1000:1010].numpy()
    settings = Settings(checkpoint=args.checkpoint, device="cpu", api_key=None, admin_token=None)
    works, fails = rows(digits)
    with TestClient(create_app(settings)) as client:
        for name, examples in (("uploads-that-work", works), ("uploads-that-fail", fails)):
            path = args.out / f"{name}.png"
            sheet(client, examples).save(path, optimize=True)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
