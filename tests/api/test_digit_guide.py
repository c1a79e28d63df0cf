"""Chosen digits through the guide classifier (models/digit_guide.py): the shipped VAE, the
shipped guide, and the shipped judge (a different training run) that says whether they are right."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import DEFAULT_DIGIT_GUIDE, Settings
from app.inference.engine import load_digit_guide
from app.main import create_app
from models.checkpoint import CheckpointError, load_checkpoint_and_prior
from models.classifier import DEFAULT_PATH as JUDGE_PATH
from models.classifier import GUIDE_PATH, classify, load_classifier
from models.digit_guide import choose, guided_digits, load_guide
from models.torch_rng import TorchCompatibleGenerator

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "mnist-vae.pt"


@pytest.fixture(scope="module")
def guided_client(make_settings) -> Iterator[TestClient]:
    settings = make_settings(checkpoint=SHIPPED, digit_guide=str(GUIDE_PATH))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def images_of(client: TestClient, **request) -> torch.Tensor:
    response = client.post("/sample?format=json", json=request)
    assert response.status_code == 200, response.text
    pngs = [base64.b64decode(s) for s in response.json()["images"]]
    arrays = [np.asarray(Image.open(io.BytesIO(p)).convert("L"), dtype=np.float32) for p in pngs]
    return torch.from_numpy(np.stack(arrays) / 255.0).unsqueeze(1)


def test_guided_digits_are_the_asked_digit_per_the_judge(guided_client):
    judge, _ = load_classifier(JUDGE_PATH)
    digits = list(range(10)) * 20  # 20 of each, one request
    images = images_of(guided_client, digits=digits, seed=2026)
    assert images.shape == (200, 1, 32, 32)
    probs, _ = classify(judge, images)
    right = probs.argmax(1) == torch.tensor(digits)
    assert right.float().mean().item() >= 0.97, right.view(20, 10).float().mean(0)
    assert guided_client.get("/model").json()["prior"]["digit_guide"]["active"] is True


def test_guided_draws_are_deterministic_and_the_png_path_agrees(guided_client):
    request = {"digit": 4, "n": 9, "seed": 77}
    first = guided_client.post("/sample", json=request)  # the fast PNG path
    again = guided_client.post("/sample", json=request)
    other = guided_client.post("/sample", json={**request, "seed": 78})
    assert first.status_code == 200 and first.content == again.content != other.content
    body = guided_client.post("/sample?format=json", json=request).json()  # the route
    assert body == guided_client.post("/sample?format=json", json=request).json()
    # plain draws do not go near the guide: the prior's own latents, as before
    plain = guided_client.post("/sample?format=json", json={"n": 3, "seed": 5}).json()
    _, _, prior = load_checkpoint_and_prior(SHIPPED)
    expected = prior.sample(3, TorchCompatibleGenerator(5))
    assert np.array_equal(np.array(plain["latents"], np.float32), expected)


def test_route_and_vae_eval_run_the_same_procedure(guided_client):
    """The service's async steps and `guided_digits` (what vae-eval calls) keep the same latents."""
    model, _, prior = load_checkpoint_and_prior(SHIPPED)
    guide = load_guide(GUIDE_PATH)
    digits = [9, 4, 7, 1, 8, 3]
    random = TorchCompatibleGenerator(31)

    def decode(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.decode(torch.from_numpy(z)).numpy()

    z, _ = guided_digits(prior, digits, random, decode, guide)
    body = guided_client.post("/sample?format=json", json={"digits": digits, "seed": 31}).json()
    assert np.allclose(np.array(body["latents"]), z, atol=1e-5)


def test_an_empty_setting_turns_the_guide_off(make_settings):
    settings = make_settings(checkpoint=SHIPPED, digit_guide="")
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["prior"]["digit_guide"] == {"active": False}
        body = client.post("/sample?format=json", json={"digits": [2, 5], "seed": 3}).json()
    _, _, prior = load_checkpoint_and_prior(SHIPPED)
    expected = prior.sample_digits([2, 5], TorchCompatibleGenerator(3))
    assert np.array_equal(np.array(body["latents"], np.float32), expected)


def test_a_missing_default_guide_is_off_but_a_missing_chosen_one_stops_the_start(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)  # the relative default path finds nothing here
    assert load_digit_guide(Settings(digit_guide=DEFAULT_DIGIT_GUIDE)) is None
    assert "digit guide" in caplog.text and "not found" in caplog.text
    with pytest.raises(CheckpointError, match="VAE_DIGIT_GUIDE"):
        load_digit_guide(Settings(digit_guide=str(tmp_path / "nope.pt")))


def test_choose_keeps_the_first_accepted_candidate_else_the_most_likely():
    z = torch.arange(3 * 4, dtype=torch.float32).reshape(3, 4, 1)  # 3 images, 4 candidates
    digits = torch.tensor([1, 2, 3])

    def one_hot(cls: int, p: float = 0.9) -> torch.Tensor:
        row = torch.full((10,), (1 - p) / 9)
        row[cls] = p
        return row

    first = torch.stack([one_hot(1), one_hot(7), one_hot(8)])  # image 0 accepted at once
    rows = torch.tensor([1, 2])
    retry = torch.stack(
        [one_hot(7), one_hot(2), one_hot(2)]  # image 1: candidate 2 is the first accepted
        + [one_hot(8, 0.5), one_hot(8, 0.4), one_hot(8, 0.6)]  # image 2: none accepted
    )
    retry[4, 3] = 0.3  # image 2, candidate 2 gives digit 3 the highest probability
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)
    retry_images = torch.arange(10, 16, dtype=torch.float32).view(6, 1, 1, 1)
    arrays = (a.numpy() for a in (z, digits, images, first, rows, retry_images, retry))
    latents, kept = choose(*arrays)
    assert latents.squeeze(1).tolist() == [0.0, 6.0, 10.0]
    assert kept.flatten().tolist() == [0.0, 11.0, 14.0]
