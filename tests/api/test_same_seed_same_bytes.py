"""A seed gives the same bytes whichever file serves (issue 29, point 2): the shipped `.pt` and
its `vae-export`, each served in-process on ONNX Runtime with the shipped guide (the checkpoint's
graphs exported at load, the export's read from its folder), answer every kind of `/sample`
request with the very same PNG, byte for byte, and the very same latents. Both draw from
`models.torch_rng.TorchCompatibleGenerator`; `tests/api/test_torch_free.py` serves the export
with torch made unimportable, and `tests/test_seeded_draws.py` pins the draws themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.inference.artifact.export_format import MANIFEST_NAME
from app.main import create_app

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "mnist-vae.pt"
GUIDE = REPO / "models" / "mnist-digit-guide.pt"

pytestmark = pytest.mark.skipif(
    not (SHIPPED.is_file() and GUIDE.is_file()), reason="the shipped model and guide are needed"
)

REQUESTS = [
    {"n": 16, "seed": 42},
    {"n": 1, "seed": 0},
    {"n": 9, "seed": 2**62 + 12345, "temperature": 0.7},
    {"n": 4, "seed": 5, "prior": "standard", "temperature": 1.3},
    {"n": 8, "seed": 42, "digit": 7},
    {"n": 10, "digits": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "seed": 31},
    {"digits": [2, 0, 2, 6], "seed": 1, "temperature": 0.8},
]


@pytest.fixture(scope="module")
def from_pt(make_settings) -> Iterator[TestClient]:
    settings = make_settings(checkpoint=SHIPPED, digit_guide=str(GUIDE), backend="onnxruntime")
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def from_export(make_settings, shipped_export: Path) -> Iterator[TestClient]:
    settings = make_settings(
        checkpoint=shipped_export / MANIFEST_NAME,
        digit_guide=str(shipped_export / "digit-guide.onnx"),
        backend="onnxruntime",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_both_serve_the_same_weights_through_the_same_runtime(from_pt, from_export) -> None:
    pt, export = from_pt.get("/model").json(), from_export.get("/model").json()
    assert pt["artifact"]["kind"] == "torch-checkpoint"
    assert export["artifact"]["kind"] == "onnx-export"
    assert pt["sha256"] == export["sha256"]
    assert pt["backend"]["name"] == export["backend"]["name"] == "onnxruntime"
    assert pt["prior"]["digit_guide"]["active"] and export["prior"]["digit_guide"]["active"]


@pytest.mark.parametrize("request_body", REQUESTS, ids=lambda r: "-".join(map(str, r)))
def test_same_seed_same_png_bytes(from_pt, from_export, request_body) -> None:
    pt = from_pt.post("/sample", json=request_body)
    export = from_export.post("/sample", json=request_body)
    assert pt.status_code == export.status_code == 200, (pt.text, export.text)
    assert pt.headers["content-type"] == "image/png"
    assert pt.content == export.content
    assert pt.headers["x-seed"] == export.headers["x-seed"] == str(request_body["seed"])


@pytest.mark.parametrize("request_body", REQUESTS[2:6:3], ids=["temperature", "digits"])
def test_same_seed_same_latents_and_images_in_json(from_pt, from_export, request_body) -> None:
    pt = from_pt.post("/sample?format=json", json=request_body).json()
    export = from_export.post("/sample?format=json", json=request_body).json()
    assert pt["latents"] == export["latents"]
    assert pt["images"] == export["images"]
