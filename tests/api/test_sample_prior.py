"""/sample with a learned prior: the checkpoint's prior by default, N(0, I) on request, a chosen
digit, and the 422s for digits that cannot be drawn. A real tiny VAE with a real fitted prior."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models.checkpoint import load_checkpoint_and_prior
from models.torch_rng import TorchCompatibleGenerator


@pytest.fixture(scope="module")
def prior_client(make_settings, prior_checkpoint) -> Iterator[TestClient]:
    # Unguided: these tests check the prior's own draws (the guide is tests/api/test_digit_guide)
    settings = make_settings(checkpoint=prior_checkpoint, digit_guide="")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def sample_json(client: TestClient, **request) -> dict:
    response = client.post("/sample?format=json", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def test_model_says_which_prior_serves(client, prior_client):
    plain = client.get("/model").json()["prior"]
    learned = prior_client.get("/model").json()["prior"]
    assert plain["name"] == "standard" and plain["digits"] == []
    assert learned["name"] == "mixture" and learned["digits"] == list(range(10))
    assert learned["components"] == 20 and learned["covariance"] == "full"


def test_the_checkpoint_prior_serves_by_default_and_standard_on_request(client, prior_client):
    request = {"n": 6, "seed": 11}
    learned = sample_json(prior_client, **request)
    standard = sample_json(prior_client, **request, prior="standard")
    plain = sample_json(client, **request)  # same weights, no prior in the checkpoint
    assert learned["prior"] == "mixture" and standard["prior"] == "standard"
    assert standard["latents"] == plain["latents"] and standard["images"] == plain["images"]
    assert learned["latents"] != standard["latents"]
    _, _, prior = load_checkpoint_and_prior(prior_client.app.state.settings.checkpoint)
    expected = prior.sample(6, TorchCompatibleGenerator(11))
    assert np.array_equal(np.array(learned["latents"], np.float32), expected)
    png = prior_client.post("/sample", json=request)
    assert png.headers["content-type"] == "image/png" and png.headers["x-prior"] == "mixture"


def test_same_request_same_bytes_for_every_kind_of_draw(prior_client):
    for request in (
        {"n": 9, "seed": 5},
        {"n": 9, "seed": 5, "temperature": 0.7, "prior": "standard"},
        {"n": 9, "seed": 5, "digit": 4},
        {"digits": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "seed": 5},
    ):
        first = prior_client.post("/sample", json=request)
        again = prior_client.post("/sample", json=request)
        other = prior_client.post("/sample", json={**request, "seed": 6})
        assert first.status_code == 200, (request, first.text)
        assert first.content == again.content != other.content


def test_digits_are_drawn_from_their_own_components(prior_client):
    body = sample_json(prior_client, digits=[3, 3, 8, 0, 9], seed=2)
    assert body["digits"] == [3, 3, 8, 0, 9] and len(body["images"]) == 5
    _, _, prior = load_checkpoint_and_prior(prior_client.app.state.settings.checkpoint)
    expected = prior.sample_digits([3, 3, 8, 0, 9], TorchCompatibleGenerator(2))
    assert np.array_equal(np.array(body["latents"], np.float32), expected)
    # and the prior's own class posterior leans to the asked digit (a tiny, blurry model)
    posterior = np.exp(prior.classes.class_log_posterior(expected))
    assert all(posterior[i, d] == posterior[i].max() for i, d in enumerate(body["digits"]))
    seven = sample_json(prior_client, n=4, digit=7, seed=2)
    assert seven["digits"] == [7] * 4 and len(seven["latents"]) == 4
    assert base64.b64decode(seven["images"][0]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"digit": 10}, "less than or equal to 9"),
        ({"digit": -1}, "greater than or equal to 0"),
        ({"digit": "x"}, "valid integer"),
        ({"digit": "7"}, "valid integer"),
        ({"digit": True}, "valid integer"),
        ({"digit": 2.5}, "valid integer"),
        ({"digits": [1, 2, 3], "n": 2}, "'digits' has 3 entries but n is 2"),
        ({"digits": [1, 2], "n": 3}, "'digits' has 2 entries but n is 3"),
        ({"digits": []}, "at least 1"),
        ({"digits": [1, 12]}, "less than or equal to 9"),
        ({"digit": 1, "digits": [1]}, "at most one of 'digit' or 'digits'"),
        ({"digit": 1, "prior": "standard"}, "cannot choose a digit"),
        ({"prior": "vamp"}, "'checkpoint' or 'standard'"),
    ],
)
def test_bad_digit_requests_get_a_clear_422(prior_client, request_body, message):
    response = prior_client.post("/sample", json={"seed": 1, **request_body})
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_a_digit_from_a_checkpoint_without_a_class_prior_is_a_422(client):
    response = client.post("/sample", json={"n": 2, "digit": 3, "seed": 1})
    assert response.status_code == 422
    assert "no per-digit mixtures" in response.json()["detail"]
    assert client.post("/sample", json={"n": 2, "seed": 1, "prior": "standard"}).status_code == 200
