"""The Open Inference Protocol routes, called by the real `tritonclient.http` over loopback.

`vae-serve` runs in a subprocess on 127.0.0.1 (a free port) with an API key, exactly as a
Triton/KServe client would meet it; a few raw-HTTP checks cover what the client hides (error
bodies, JSON tensors, the versioned routes).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.images.examples import ExampleStore
from harness.live_server import LiveServer
from models.checkpoint import file_sha256, load_checkpoint

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

API_KEY = "oip-test-key"


def auth() -> dict[str, str]:
    """A fresh header dict per call: tritonclient adds its own headers to the dict it is given."""
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    """`host:port` of a started `vae-serve` (tritonclient takes no scheme)."""
    with LiveServer(tiny_checkpoint, VAE_API_KEY=API_KEY) as live:
        yield live.host_port


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server, connection_timeout=30, network_timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def expected(tiny_checkpoint: Path) -> dict:
    model, metadata = load_checkpoint(tiny_checkpoint)
    return {
        "latent_dim": model.latent_dim,
        "version": file_sha256(tiny_checkpoint)[:12],
        "decoder": f"{metadata['dataset']['name']}-vae-decoder",
        "encoder": f"{metadata['dataset']['name']}-vae-encoder",
    }


def test_health_needs_no_key_and_metadata_does(client, server):
    assert client.is_server_live() and client.is_server_ready()
    with pytest.raises(InferenceServerException) as denied:
        client.get_server_metadata()
    assert denied.value.status() == "401"
    refused = httpx.post(f"http://{server}/v2/repository/index", timeout=30)
    assert refused.status_code == 401 and "API key" in refused.json()["error"]
    metadata = client.get_server_metadata(headers=auth())
    assert metadata["name"] == "mnist-vae" and "binary_tensor_data" in metadata["extensions"]


def test_repository_index_and_model_metadata(client, expected):
    index = client.get_model_repository_index(headers=auth())
    assert sorted(m["name"] for m in index) == sorted([expected["decoder"], expected["encoder"]])
    assert {m["version"] for m in index} == {expected["version"]}
    assert all(m["state"] == "READY" for m in index)

    latent = expected["latent_dim"]
    decoder = client.get_model_metadata(expected["decoder"], headers=auth())
    assert decoder["versions"] == [expected["version"]]
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, latent]}]
    assert decoder["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    encoder = client.get_model_metadata(
        expected["encoder"], model_version=expected["version"], headers=auth()
    )
    assert [o["name"] for o in encoder["outputs"]] == ["mu", "logvar"]
    assert encoder["inputs"][0]["shape"] == [-1, 1, 32, 32]
    for name in (expected["decoder"], expected["encoder"]):
        assert client.is_model_ready(name, headers=auth())
        assert client.is_model_ready(name, model_version=expected["version"], headers=auth())
    assert not client.is_model_ready(expected["decoder"], model_version="0", headers=auth())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decoder_gives_the_images_of_post_decode(client, server, expected, binary):
    z = np.random.default_rng(3).standard_normal((5, expected["latent_dim"])).astype(np.float32)
    z_input = httpclient.InferInput("z", list(z.shape), "FP32")
    z_input.set_data_from_numpy(z, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("image", binary_data=binary)]
    result = client.infer(
        expected["decoder"], [z_input], outputs=wanted, request_id="r-1", headers=auth()
    )
    images = result.as_numpy("image")
    assert images.shape == (5, 1, 32, 32) and images.dtype == np.float32
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == expected["version"]

    # /decode answers the same latents with 8-bit PNGs: the protocol's floats, rounded the same
    # way (x * 255 + 0.5, clamped), must give exactly those pixels.
    response = httpx.post(
        f"http://{server}/decode?format=json", json={"zs": z.tolist()}, headers=auth(), timeout=30
    )
    assert response.status_code == 200
    pngs = [np.array(Image.open(io.BytesIO(_b64(s)))) for s in response.json()["images"]]
    as_pixels = np.clip(images[:, 0] * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(as_pixels, np.stack(pngs))
    assert images.std() > 0.01  # a real decoder output, not a constant


def test_encoder_gives_the_posterior_of_get_encode(client, server, expected):
    digits = np.stack([_example("3-0"), _example("7-0")])  # bundled MNIST digits, 32x32
    image = httpclient.InferInput("image", list(digits.shape), "FP32")
    image.set_data_from_numpy(digits)  # binary (tritonclient's default)
    result = client.infer(expected["encoder"], [image], headers=auth())  # all outputs, binary
    mu, logvar = result.as_numpy("mu"), result.as_numpy("logvar")
    assert mu.shape == logvar.shape == (2, expected["latent_dim"])

    for row, example in enumerate(("3-0", "7-0")):
        response = httpx.get(
            f"http://{server}/encode", params={"example": example}, headers=auth(), timeout=30
        )
        np.testing.assert_allclose(mu[row], response.json()["mu"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(logvar[row], response.json()["logvar"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(mu[0], mu[1])


def test_wrong_shape_datatype_and_model_are_client_errors(client, expected):
    latent = expected["latent_dim"]
    wrong_width = httpclient.InferInput("z", [2, latent + 1], "FP32")
    wrong_width.set_data_from_numpy(np.zeros((2, latent + 1), np.float32))
    with pytest.raises(InferenceServerException) as shape_error:
        client.infer(expected["decoder"], [wrong_width], headers=auth())
    assert shape_error.value.status() == "400"
    assert f"expected [-1, {latent}]" in shape_error.value.message()

    doubles = httpclient.InferInput("z", [1, latent], "FP64")
    doubles.set_data_from_numpy(np.zeros((1, latent), np.float64))
    with pytest.raises(InferenceServerException) as type_error:
        client.infer(expected["decoder"], [doubles], headers=auth())
    assert type_error.value.status() == "400" and "FP64" in type_error.value.message()

    z = httpclient.InferInput("z", [1, latent], "FP32")
    z.set_data_from_numpy(np.zeros((1, latent), np.float32))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [z], headers=auth())
    assert unknown.value.status() == "404" and expected["decoder"] in unknown.value.message()
    with pytest.raises(InferenceServerException) as unknown_metadata:
        client.get_model_metadata("no-such-model", headers=auth())
    assert unknown_metadata.value.status() == "404"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": ["a"]}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": [1, 2]}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [0, 8], "data": []}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": "1x8", "data": []}]}',
        b'{"inputs": [{"name": "q", "datatype": "FP32", "shape": [1, 8], "data": []}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": [[1], [2, 3]]}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
        b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8],'
        b' "parameters": {"binary_data_size": 32}}]}',
    ],
    ids=[
        "not-json",
        "not-object",
        "no-inputs",
        "strings",
        "too-few-values",
        "empty-batch",
        "bad-shape",
        "unknown-input",
        "ragged",
        "nan",
        "binary-missing",
    ],
)
def test_bad_infer_bodies_get_400_with_an_error_string(server, expected, body):
    body = body.replace(b"[1, 8]", f"[1, {expected['latent_dim']}]".encode())
    response = httpx.post(
        f"http://{server}/v2/models/{expected['decoder']}/infer",
        content=body,
        headers=auth(),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


def test_json_tensors_nested_data_and_versioned_infer(server, expected):
    latent = expected["latent_dim"]
    z = [[0.1 * i for i in range(latent)], [0.0] * latent]
    request = {
        "inputs": [{"name": "z", "datatype": "FP32", "shape": [2, latent], "data": z}],
        "outputs": [{"name": "image"}],
    }
    url = f"http://{server}/v2/models/{expected['decoder']}/versions/{expected['version']}/infer"
    response = httpx.post(url, json=request, headers=auth(), timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    [image] = response.json()["outputs"]
    assert image["shape"] == [2, 1, 32, 32] and len(image["data"]) == 2 * 32 * 32

    wrong_version = url.replace(expected["version"], "1")
    response = httpx.post(wrong_version, json=request, headers=auth(), timeout=30)
    assert response.status_code == 404 and "version" in response.json()["error"]


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def _example(example_id: str) -> np.ndarray:
    """A bundled digit as [1, 32, 32] floats in [0, 1], read by the service's own example store."""
    return ExampleStore().get(example_id).tensor
