"""The torch-free server, for real: the shipped model exported with `vae-export`, served by
`vae-serve` in a subprocess where `import torch` fails, and held to the full server's answers.

The CPU image serves this way (the Dockerfile's `cpu` target). Here the same code runs from the
repository, with torch made unimportable by a `sitecustomize` (`sys.modules["torch"] = None`), so
any import of torch on the serving path fails the start or the request. The same requests with the
same seeds go to the torch path (`TestClient` on the shipped checkpoint, on ONNX Runtime as `auto`
picks on a CPU): a seed draws the same latents and PNGs, byte for byte, from the one generator
both use; images from the Open Inference Protocol, and encodings, within the bound (1e-4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.inference.artifact.export_format import MANIFEST_NAME
from app.main import create_app
from harness.live_server import REPO, LiveServer

SHIPPED = REPO / "models" / "mnist-vae.pt"
GUIDE = REPO / "models" / "mnist-digit-guide.pt"
BOUND = 1e-4
ADMIN = "torch-free-admin-token"

pytestmark = pytest.mark.skipif(
    not (SHIPPED.is_file() and GUIDE.is_file()), reason="the shipped model and guide are needed"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vae-export` of the shipped checkpoint and guide: the folder, manifest inside."""
    out = tmp_path_factory.mktemp("export")
    result = subprocess.run(
        [sys.executable, "-m", "app.inference.artifact.export_writer", "--checkpoint", str(SHIPPED),
         "--digit-guide", str(GUIDE), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH whose sitecustomize makes torch and torchvision unimportable."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "sitecustomize.py").write_text(
        "import sys\nsys.modules['torch'] = None\nsys.modules['torchvision'] = None\n"
    )
    return os.pathsep.join([str(folder), str(REPO)])


@pytest.fixture(scope="module")
def torch_free(exported: Path, no_torch: str) -> Iterator[LiveServer]:
    with LiveServer(
        exported / MANIFEST_NAME,
        ready=True,
        PYTHONPATH=no_torch,
        VAE_DIGIT_GUIDE=str(exported / "digit-guide.onnx"),
        VAE_ADMIN_TOKEN=ADMIN,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def full(make_settings) -> Iterator[TestClient]:
    settings = make_settings(checkpoint=SHIPPED, digit_guide=str(GUIDE))
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_sitecustomize_really_blocks_torch(no_torch: str) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env={**os.environ, "PYTHONPATH": no_torch},
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode != 0 and "torch" in probe.stderr


def test_the_export_lists_every_file_with_its_sha256(exported: Path) -> None:
    import hashlib

    manifest = json.loads((exported / MANIFEST_NAME).read_text())
    entries = [*manifest["graphs"].values(), manifest["prior"], manifest["check"]]
    entries += [manifest["digit_guide"], manifest["typicality"]]
    assert {e["file"] for e in entries} == {
        "encode.onnx", "decode.onnx", "reconstruct.onnx", "prior.npz", "check.npz",
        "digit-guide.onnx", "typicality.npz",
    }  # fmt: skip
    for entry in entries:
        assert (
            hashlib.sha256((exported / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
        )
    assert manifest["source"]["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert manifest["check"]["max_error"] <= BOUND


def test_model_says_which_artifact_and_runtime_serve(torch_free: LiveServer, full) -> None:
    free = httpx.get(f"{torch_free.url}/model", timeout=10).json()
    torch_model = full.get("/model").json()
    assert free["artifact"]["kind"] == "onnx-export"
    assert free["artifact"]["runtime"].startswith("onnxruntime ")
    assert free["artifact"]["path"].endswith(MANIFEST_NAME)
    assert free["backend"]["name"] == "onnxruntime" and free["backend"]["max_error"] <= BOUND
    assert torch_model["artifact"]["kind"] == "torch-checkpoint"
    assert torch_model["artifact"]["runtime"].startswith("torch ")
    # the same weights: the export records the checkpoint's sha256, and the same prior and guide
    assert free["sha256"] == torch_model["sha256"]
    assert free["prior"]["components"] == torch_model["prior"]["components"]
    assert free["prior"]["digit_guide"]["active"] and free["prior"]["digit_guide"]["runtime"] == (
        "onnxruntime"
    )


@pytest.mark.parametrize(
    "request_body",
    [
        {"n": 9, "seed": 5},
        {"n": 4, "seed": 2**62 + 12345, "temperature": 0.7},
        {"n": 3, "seed": 5, "prior": "standard"},
        {"digits": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "seed": 31},
    ],
)
def test_same_request_same_latents_and_images(torch_free: LiveServer, full, request_body) -> None:
    free = httpx.post(f"{torch_free.url}/sample?format=json", json=request_body, timeout=30)
    want = full.post("/sample?format=json", json=request_body)
    assert free.status_code == want.status_code == 200, free.text
    free_body, want_body = free.json(), want.json()
    assert free_body["latents"] == want_body["latents"]
    assert free_body["images"] == want_body["images"]
    # and the images in float32, decoded by each side from the same latents
    z = np.array(want_body["latents"], dtype=np.float32)
    infer = {"inputs": [{"name": "z", "datatype": "FP32", "shape": list(z.shape),
                         "data": z.ravel().tolist()}]}  # fmt: skip
    path = "/v2/models/mnist-vae-decoder/infer"
    got = httpx.post(f"{torch_free.url}{path}", json=infer, timeout=30).json()["outputs"][0]
    expected = full.post(path, json=infer).json()["outputs"][0]
    assert np.abs(np.array(got["data"]) - np.array(expected["data"])).max() <= BOUND


def test_same_upload_same_encoding_and_reconstruction(
    torch_free: LiveServer, full, digit_png: bytes
) -> None:
    files = {"file": ("7.png", digit_png, "image/png")}
    for route, keys in (("/encode", ("mu", "logvar")), ("/reconstruct?format=json", ("mu",))):
        got = httpx.post(f"{torch_free.url}{route}", files=files, timeout=30).json()
        want = full.post(route, files=files).json()
        for key in keys:
            assert np.abs(np.array(got[key]) - np.array(want[key])).max() <= BOUND
        # the same calibration, scored by the same NumPy code on latents within 1e-4
        assert abs(got["typicality"] - want["typicality"]) <= 2e-3
        assert got["is_digit"] is want["is_digit"] is True
    got = httpx.get(f"{torch_free.url}/encode?example=3-1", timeout=30).json()
    want = full.get("/encode?example=3-1").json()
    assert np.abs(np.array(got["mu"]) - np.array(want["mu"])).max() <= BOUND
    png_free = httpx.post(f"{torch_free.url}/sample", json={"n": 16, "seed": 0}, timeout=30)
    assert png_free.headers["content-type"] == "image/png"


def test_reload_loads_exports_and_refuses_a_torch_checkpoint_with_a_4xx(
    torch_free: LiveServer, exported: Path
) -> None:
    import shutil

    headers = {"Authorization": f"Bearer {ADMIN}"}
    url = f"{torch_free.url}/admin/reload"
    again = httpx.post(url, json={"checkpoint": MANIFEST_NAME}, headers=headers, timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["artifact"]["kind"] == "onnx-export"
    shutil.copy(SHIPPED, exported / "mnist-vae.pt")
    refused = httpx.post(url, json={"checkpoint": "mnist-vae.pt"}, headers=headers, timeout=60)
    assert refused.status_code == 409, refused.text
    assert "vae-export" in refused.json()["detail"]
    outside = httpx.post(url, json={"checkpoint": "../x.json"}, headers=headers, timeout=60)
    assert outside.status_code == 403
    # still serving the export
    assert httpx.post(f"{torch_free.url}/sample", json={"n": 1}, timeout=30).status_code == 200


def test_a_tampered_export_is_refused_at_reload(torch_free: LiveServer, exported: Path) -> None:
    import shutil

    twin = exported / "twin"
    twin.mkdir(exist_ok=True)
    for file in exported.iterdir():
        if file.is_file():
            shutil.copy(file, twin / file.name)
    data = bytearray((twin / "decode.onnx").read_bytes())
    data[-1] ^= 0xFF
    (twin / "decode.onnx").write_bytes(bytes(data))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = httpx.post(
        f"{torch_free.url}/admin/reload", json={"checkpoint": "twin/manifest.json"},
        headers=headers, timeout=60,
    )  # fmt: skip
    assert response.status_code == 409 and "sha256" in response.json()["detail"]
