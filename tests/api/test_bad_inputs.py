"""A corpus of bad inputs: each gets the right 4xx with a JSON `detail`, never a 500 or a hang."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge canvas, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="ICO")
    return buffer.getvalue()


UPLOADS = {
    "empty file": (b"", 422),
    "text file": (b"hello, this is not an image\n" * 10, 422),
    "truncated png": (None, 422),  # filled in from the real digit below
    "decompression bomb header": (png_header_claiming(10000, 10000), 413),
    "unsupported format (ICO)": (ico_bytes(), 415),
}


@pytest.mark.parametrize("name", list(UPLOADS))
@pytest.mark.parametrize("route", ["/reconstruct", "/encode"])
def test_bad_uploads_are_refused(client, digit_png, route, name):
    data, status = UPLOADS[name]
    if data is None:
        data = digit_png[: len(digit_png) // 2]
    response = client.post(route, files={"file": ("upload.png", data, "image/png")})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_upload_over_five_megabytes_is_413(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (5 * 1024 * 1024 + 10)
    response = client.post("/reconstruct", files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413


def test_body_far_over_the_limit_is_refused_from_content_length(client):
    response = client.post(
        "/reconstruct",
        content=b"x" * (11 * 1024 * 1024),
        headers={"Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code == 413


def test_streamed_body_without_content_length_is_cut_off_at_the_limit(client):
    """A chunked upload has no Content-Length to check: the bytes are counted as they arrive."""

    def chunks():
        for _ in range(12):
            yield b"x" * (1024 * 1024)

    response = client.post(
        "/reconstruct",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert response.status_code == 413
    assert "at most" in response.json()["detail"]


def test_missing_file_field_is_422(client):
    assert client.post("/reconstruct", data={"nothing": "here"}).status_code == 422


@pytest.mark.parametrize(
    "params, status",
    [
        ({"image": "@@not-base64@@"}, 422),
        ({"image": base64.urlsafe_b64encode(b"plain text").decode()}, 422),
        ({"example": "11-0"}, 404),
        ({}, 422),
        ({"example": "7-0", "image": "AAAA"}, 422),
        ({"example": "7-0", "preprocess": "sometimes"}, 422),
    ],
)
def test_bad_encode_queries(client, params, status):
    response = client.get("/encode", params=params)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"n": 0},
        {"n": 1000},
        {"n": -3},
        {"n": "many"},
        {"temperature": 0},
        {"temperature": 3.5},
        {"seed": -1},
        {"unknown": 1},
    ],
)
def test_bad_sample_bodies_are_422(client, body):
    assert client.post("/sample", json=body).status_code == 422


def test_sample_temperature_nan_is_422(client):
    response = client.post(
        "/sample",
        content=b'{"n": 1, "temperature": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_malformed_json_is_422(client):
    response = client.post(
        "/sample", content=b'{"n": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        b'{"z": [0.0, 1.0]}',
        b'{"z": [NaN, 0, 0, 0, 0, 0, 0, 0]}',
        b'{"z": [Infinity, 0, 0, 0, 0, 0, 0, 0]}',
        b'{"z": []}',
        b"{}",
        b'{"z": [0, 0, 0, 0, 0, 0, 0, 0], "zs": [[0, 0, 0, 0, 0, 0, 0, 0]]}',
        b'{"zs": [[0, 0, 0, 0, 0, 0, 0, 0], [0, 0]]}',
    ],
    ids=["wrong length", "NaN", "Infinity", "empty", "neither", "both", "ragged"],
)
def test_bad_latents_are_422(client, body):
    response = client.post("/decode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("steps", [1, 0, 65, 1000])
def test_interpolate_steps_out_of_range_are_422(client, steps):
    request = {"start": {"example": "1-0"}, "end": {"example": "2-0"}, "steps": steps}
    assert client.post("/interpolate", json=request).status_code == 422


def test_interpolate_unknown_example_is_404(client):
    request = {"start": {"example": "1-0"}, "end": {"example": "nope"}, "steps": 3}
    assert client.post("/interpolate", json=request).status_code == 404


def test_interpolate_upload_steps_out_of_range_is_422(client, digit_png):
    files = {"start": ("a.png", digit_png, "image/png"), "end": ("b.png", digit_png, "image/png")}
    response = client.post("/interpolate/upload", files=files, data={"steps": "1"})
    assert response.status_code == 422


def test_unknown_example_png_is_404(client):
    assert client.get("/examples/42-0.png").status_code == 404
