"""The bundled example digits (MNIST test images, see scripts/make_examples.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import NotFound

EXAMPLES_DIR = Path(__file__).resolve().parent / "example_digits"


@dataclass(frozen=True)
class ExampleDigit:
    id: str
    label: int
    path: Path

    @property
    def png(self) -> bytes:
        return self.path.read_bytes()

    @cached_property
    def tensor(self) -> np.ndarray:
        """[1, 32, 32] float32 in [0, 1]: the 28x28 digit zero-padded by 2, exactly as in
        training (`models.vae.pad_to_32`)."""
        with Image.open(self.path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return np.pad(pixels, 2)[None]


class ExampleStore:
    """Reads the index once; digits are looked up by id (`<label>-<k>`)."""

    def __init__(self, directory: Path = EXAMPLES_DIR) -> None:
        index = directory / "index.json"
        entries = json.loads(index.read_text()) if index.is_file() else []
        self._by_id = {
            e["id"]: ExampleDigit(e["id"], int(e["label"]), directory / f"{e['id']}.png")
            for e in entries
        }

    def __iter__(self):
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, example_id: str) -> ExampleDigit:
        try:
            return self._by_id[example_id]
        except KeyError:
            raise NotFound(
                f"no example {example_id!r}; GET /examples lists the ids (e.g. '7-0')"
            ) from None
