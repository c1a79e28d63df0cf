"""POST /sample, /decode, /interpolate and /interpolate/upload with the tiny real model."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_of(data: bytes) -> Image.Image:
    assert data.startswith(PNG_MAGIC)
    return Image.open(io.BytesIO(data))


def test_sample_returns_a_png_grid_and_the_seed(client):
    response = client.post("/sample", json={"n": 16, "seed": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "3"
    width, height = image_of(response.content).size
    assert width == height > 4 * 32


def test_same_seed_gives_identical_bytes(client):
    first = client.post("/sample", json={"n": 9, "seed": 1234, "temperature": 0.8})
    second = client.post("/sample", json={"n": 9, "seed": 1234, "temperature": 0.8})
    other = client.post("/sample", json={"n": 9, "seed": 1235, "temperature": 0.8})
    assert first.content == second.content
    assert first.content != other.content


def test_sample_without_seed_picks_one_and_reports_it(client):
    body = client.post("/sample?format=json", json={"n": 2}).json()
    replay = client.post("/sample?format=json", json={"n": 2, "seed": body["seed"]}).json()
    assert replay["images"] == body["images"]
    assert replay["latents"] == body["latents"]


def test_sample_json_has_images_and_latents(client):
    response = client.post(
        "/sample", json={"n": 3, "seed": 7}, headers={"Accept": "application/json"}
    )
    body = response.json()
    assert body["seed"] == 7 and response.headers["x-seed"] == "7"
    assert len(body["images"]) == len(body["latents"]) == 3
    assert len(body["latents"][0]) == client.get("/model").json()["latent_dim"]
    assert image_of(base64.b64decode(body["images"][0])).size == (32, 32)


def test_decode_one_latent_gives_one_image(client):
    latent_dim = client.get("/model").json()["latent_dim"]
    response = client.post("/decode", json={"z": [0.0] * latent_dim})
    assert response.status_code == 200
    assert image_of(response.content).size == (32, 32)


def test_decode_several_latents_as_json(client):
    latent_dim = client.get("/model").json()["latent_dim"]
    zs = [[0.0] * latent_dim, [1.0] * latent_dim, [-1.0] * latent_dim]
    body = client.post("/decode?format=json", json={"zs": zs}).json()
    assert len(body["images"]) == 3


def test_interpolate_between_examples_gives_a_strip(client):
    request = {"start": {"example": "3-0"}, "end": {"example": "8-0"}, "steps": 6}
    strip = image_of(client.post("/interpolate", json=request).content)
    assert strip.size[0] > 5 * strip.size[1]


def test_interpolate_between_latents_starts_and_ends_on_them(client):
    latent_dim = client.get("/model").json()["latent_dim"]
    start, end = [-1.0] * latent_dim, [1.0] * latent_dim
    request = {"start": {"z": start}, "end": {"z": end}, "steps": 5}
    body = client.post("/interpolate?format=json", json=request).json()
    assert body["steps"] == 5 and len(body["images"]) == 5
    assert body["latents"][0] == start and body["latents"][-1] == end
    assert body["latents"][2] == [0.0] * latent_dim


def test_interpolate_between_two_uploads(client, digit_png):
    other = (REPO / "app" / "images" / "example_digits" / "1-0.png").read_bytes()
    files = {"start": ("a.png", digit_png, "image/png"), "end": ("b.png", other, "image/png")}
    response = client.post("/interpolate/upload?format=json", files=files, data={"steps": "4"})
    assert response.status_code == 200
    assert len(response.json()["images"]) == 4
