"""POST /reconstruct, GET/POST /encode and the bundled examples, with real digits."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def test_reconstruct_png_shows_input_beside_reconstruction(client, digit_png):
    response = client.post("/reconstruct", files={"file": ("7.png", digit_png, "image/png")})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    strip = Image.open(io.BytesIO(response.content))
    assert strip.size[0] > 2 * 32 > strip.size[1] > 0


def test_reconstruct_json_returns_what_the_model_saw(client, digit_png):
    files = {"file": ("7.png", digit_png, "image/png")}
    body = client.post("/reconstruct", files=files, headers={"Accept": "application/json"}).json()
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["input"]))))
    assert seen.shape == (32, 32)
    assert seen.any()
    assert len(body["mu"]) == len(body["logvar"]) > 0
    assert body["neg_elbo"] > 0


def test_reconstruction_keeps_the_unmodelled_padding_black(client, digit_png):
    files = {"file": ("7.png", digit_png, "image/png")}
    body = client.post("/reconstruct?format=json", files=files).json()
    recon = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["reconstruction"]))))
    assert recon.shape == (32, 32) and recon[2:30, 2:30].any()
    ring = np.ones((32, 32), bool)
    ring[2:30, 2:30] = False
    assert not recon[ring].any()


def test_preprocess_none_feeds_an_mnist_digit_unchanged(client, digit_png):
    files = {"file": ("7.png", digit_png, "image/png")}
    body = client.post("/reconstruct?format=json&preprocess=none", files=files).json()
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["input"]))))
    original = np.asarray(Image.open(io.BytesIO(digit_png)))
    assert np.array_equal(seen[2:30, 2:30], original)
    assert not seen[:2].any() and not seen[:, :2].any()


def test_encode_example_query(client):
    body = client.get("/encode", params={"example": "7-0"}).json()
    assert body["latent_dim"] == len(body["mu"]) == len(body["logvar"])


def test_encode_base64url_query_matches_the_example(client, digit_png):
    encoded = base64.urlsafe_b64encode(digit_png).decode().rstrip("=")
    from_query = client.get("/encode", params={"image": encoded, "preprocess": "none"}).json()
    from_example = client.get("/encode", params={"example": "7-0"}).json()
    assert np.allclose(from_query["mu"], from_example["mu"], atol=1e-5)


def test_encode_upload_matches_the_query(client, digit_png):
    encoded = base64.urlsafe_b64encode(digit_png).decode()
    from_query = client.get("/encode", params={"image": encoded}).json()
    uploaded = client.post("/encode", files={"file": ("7.png", digit_png, "image/png")}).json()
    assert np.allclose(from_query["mu"], uploaded["mu"], atol=1e-5)


def test_examples_list_ten_digits_per_class(client):
    examples = client.get("/examples").json()["examples"]
    labels = [e["label"] for e in examples]
    assert sorted(set(labels)) == list(range(10))
    assert all(labels.count(d) == 10 for d in range(10))
    png = client.get(examples[0]["url"])
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (28, 28)
