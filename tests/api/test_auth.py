"""VAE_API_KEY: every route but health, readiness and metrics needs `Authorization: Bearer`."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def guarded(make_settings):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        yield client


@pytest.mark.parametrize(
    "method, path, kwargs",
    [
        ("post", "/sample", {"json": {"n": 1}}),
        ("get", "/encode", {"params": {"example": "1-0"}}),
        ("get", "/model", {}),
        ("get", "/examples", {}),
        ("post", "/decode", {"json": {"z": [0.0] * 8}}),
    ],
)
def test_routes_need_the_key(guarded, method, path, kwargs):
    assert getattr(guarded, method)(path, **kwargs).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert getattr(guarded, method)(path, headers=wrong, **kwargs).status_code == 401
    right = {"Authorization": f"Bearer {KEY}"}
    assert getattr(guarded, method)(path, headers=right, **kwargs).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


def test_401_says_what_is_missing(guarded):
    body = guarded.get("/model").json()
    assert "API key" in body["detail"]
