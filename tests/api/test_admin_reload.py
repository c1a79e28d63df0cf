"""POST /admin/reload: token-guarded, atomic, and a bad checkpoint leaves the old model serving."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.checkpoint import file_sha256

TOKEN = "admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_client(make_settings, tmp_path_factory):
    """Reloads may come from anywhere under pytest's temporary folder (VAE_CHECKPOINT_DIR)."""
    anywhere = tmp_path_factory.getbasetemp()
    settings = make_settings(admin_token=TOKEN, checkpoint_dir=anywhere)
    with TestClient(create_app(settings)) as client:
        yield client


def test_route_is_absent_without_an_admin_token(client):
    assert client.post("/admin/reload").status_code == 404


def test_reload_needs_the_token(admin_client):
    assert admin_client.post("/admin/reload").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert admin_client.post("/admin/reload", headers=wrong).status_code == 401


def test_reload_swaps_to_a_second_checkpoint(admin_client, tiny_checkpoint, second_checkpoint):
    before = admin_client.get("/model").json()["sha256"]
    assert before == file_sha256(tiny_checkpoint)
    sample_before = admin_client.post("/sample", json={"n": 4, "seed": 5}).content

    body = {"checkpoint": str(second_checkpoint)}
    response = admin_client.post("/admin/reload", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == file_sha256(second_checkpoint)
    assert admin_client.get("/model").json()["sha256"] == file_sha256(second_checkpoint)
    assert admin_client.post("/sample", json={"n": 4, "seed": 5}).content != sample_before


def test_a_path_with_a_nul_byte_is_422_not_500(admin_client):
    response = admin_client.post("/admin/reload", json={"checkpoint": "a\x00b"}, headers=AUTH)
    assert response.status_code == 422


def test_reload_without_body_rereads_the_configured_checkpoint(admin_client, tiny_checkpoint):
    response = admin_client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 200
    assert response.json()["sha256"] == file_sha256(tiny_checkpoint)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_corrupt_checkpoint_is_refused_and_old_model_keeps_serving(
    admin_client, tiny_checkpoint, tmp_path, content
):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(content)
    response = admin_client.post("/admin/reload", json={"checkpoint": str(corrupt)}, headers=AUTH)
    assert response.status_code == 409
    assert "still serving the old model" in response.json()["detail"]
    assert admin_client.get("/model").json()["sha256"] == file_sha256(tiny_checkpoint)
    assert admin_client.post("/sample", json={"n": 1, "seed": 1}).status_code == 200


def test_missing_checkpoint_is_refused(admin_client, tmp_path):
    response = admin_client.post(
        "/admin/reload", json={"checkpoint": str(tmp_path / "absent.pt")}, headers=AUTH
    )
    assert response.status_code == 404
    assert "no checkpoint file" in response.json()["detail"]


def test_requests_in_flight_finish_on_one_model_or_the_other(
    make_settings, serving, second_checkpoint
):
    """A reload racing 64 identical requests: each answer is wholly the old or the new model's."""
    # All 64 queue at once (light work is otherwise refused past VAE_LIGHT_QUEUE_MS).
    settings = make_settings(
        admin_token=TOKEN, checkpoint_dir=second_checkpoint.parent, light_queue_ms=10_000
    )

    async def race() -> tuple[bytes, bytes, list[int], list[bytes]]:
        async with serving(settings) as client:
            request = {"n": 4, "seed": 11}
            old = (await client.post("/sample", json=request)).content
            reload = client.post(
                "/admin/reload", json={"checkpoint": str(second_checkpoint)}, headers=AUTH
            )
            answers = await asyncio.gather(
                *[client.post("/sample", json=request) for _ in range(64)], reload
            )
            new = (await client.post("/sample", json=request)).content
        samples = answers[:-1]
        return old, new, [r.status_code for r in answers], [r.content for r in samples]

    old, new, statuses, contents = asyncio.run(race())
    assert old != new
    assert set(statuses) == {200}
    assert set(contents) <= {old, new}


def test_a_valid_checkpoint_for_other_inputs_is_refused_not_a_500(admin_client, tmp_path):
    from models.checkpoint import save_checkpoint
    from models.vae import build_model

    rgb = save_checkpoint(tmp_path / "rgb.pt", build_model("tiny", in_channels=3), {})
    response = admin_client.post("/admin/reload", json={"checkpoint": str(rgb)}, headers=AUTH)
    assert response.status_code == 409
    assert "does not run on 1x32x32 digits" in response.json()["detail"]
    assert admin_client.post("/sample", json={"n": 1, "seed": 1}).status_code == 200


def test_a_checkpoint_replaced_while_loading_is_refused(
    tiny_checkpoint, second_checkpoint, tmp_path, monkeypatch
):
    """/model must never show a sha256 other than the weights being served."""
    import shutil

    from app.inference.artifact import checkpoint_reader
    from app.inference.artifact.loading import load_model
    from models.checkpoint import CheckpointError

    path = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, path)
    real_load = checkpoint_reader.load_checkpoint_parts

    def load_then_replace(p, device="cpu"):
        loaded = real_load(p, device=device)
        staged = tmp_path / "staged.pt"
        shutil.copy(second_checkpoint, staged)
        staged.replace(path)  # what vae-train's atomic save does to a served file
        return loaded

    monkeypatch.setattr(checkpoint_reader, "load_checkpoint_parts", load_then_replace)
    with pytest.raises(CheckpointError, match="changed while it was being loaded"):
        load_model(path, "cpu")
