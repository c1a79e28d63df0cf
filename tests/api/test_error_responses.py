"""Errors leave in one shape: a typed error's own status, and a 500 that names only its request."""

from __future__ import annotations

import base64

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app

SECRET = "/srv/private/weights.pt: CUDA error 700 at 0xdeadbeef"


@pytest.fixture
def broken_decoder_client(make_settings, monkeypatch):
    """A served app whose decoder raises (after warm-up), with a message that must not leak.
    Eager torch serves, so patching the model's `decode` reaches the forward pass."""
    with TestClient(create_app(make_settings(backend="torch"))) as client:

        def broken_decode(z: torch.Tensor) -> torch.Tensor:
            raise RuntimeError(SECRET)

        monkeypatch.setattr(client.app.state.engine.current.model, "decode", broken_decode)
        yield client


def test_a_failing_batch_is_a_500_with_only_a_detail_and_the_request_id(broken_decoder_client):
    response = broken_decoder_client.post(
        "/sample", json={"n": 2, "seed": 1}, headers={"X-Request-ID": "req-42"}
    )
    assert response.status_code == 500
    assert response.json() == {"detail": "inference failed", "request_id": "req-42"}
    assert "CUDA" not in response.text and "deadbeef" not in response.text


def test_the_batcher_survives_a_failed_batch(broken_decoder_client, monkeypatch):
    assert broken_decoder_client.post("/sample", json={"n": 1, "seed": 1}).status_code == 500
    model = broken_decoder_client.app.state.engine.current.model
    monkeypatch.delattr(model, "decode")  # the class's own decode again
    assert broken_decoder_client.post("/sample", json={"n": 1, "seed": 1}).status_code == 200


def test_a_failed_batch_and_an_unexpected_bug_answer_the_same_shape(
    broken_decoder_client, monkeypatch
):
    failed = broken_decoder_client.post("/decode", json={"z": [0.0] * 8})
    engine = broken_decoder_client.app.state.engine

    async def bug(*args: object) -> None:
        raise KeyError(SECRET)  # not a service error: the middleware's last resort answers

    monkeypatch.setattr(engine, "encode_scored", bug)  # what /encode calls
    unexpected = broken_decoder_client.get("/encode", params={"example": "7-0"})
    for response in (failed, unexpected):
        assert response.status_code == 500
        assert set(response.json()) == {"detail", "request_id"}
        assert response.json()["request_id"] == response.headers["x-request-id"]
        assert "private" not in response.text


def test_requests_before_the_model_is_loaded_are_503_not_ready(settings):
    client = TestClient(create_app(settings))  # no `with`: the lifespan never loads a model
    response = client.post("/sample", json={"n": 1})
    assert response.status_code == 503
    assert response.json() == {"detail": "model is not loaded yet"}


def test_the_upload_limit_follows_the_setting(make_settings):
    with TestClient(create_app(make_settings(max_upload_bytes=1000))) as client:
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "at most 1000 bytes" in description
        image = base64.urlsafe_b64encode(b"\x89PNG" + bytes(1500)).decode()
        response = client.get("/encode", params={"image": image})
        assert response.status_code == 413
        assert "1000 bytes" in response.json()["detail"]
