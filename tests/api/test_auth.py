"""VAE_API_KEY: every route but health, readiness and metrics needs `Authorization: Bearer`;
with VAE_ADMIN_TOKEN too, `/admin/...` needs the admin token in that header instead."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from harness.live_server import PLAIN_UVICORN, VAE_SERVE, server_env, start_that_stops

KEY = "s3cret-key"
ADMIN = "adm1n-token"
AS_CLIENT = {"Authorization": f"Bearer {KEY}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="module")
def both(make_settings):
    """Both secrets set, as docker-compose.yml allows (issue 26, point 6)."""
    with TestClient(create_app(make_settings(api_key=KEY, admin_token=ADMIN))) as client:
        yield client


def test_with_both_set_the_admin_token_reloads(both):
    """Both read `Authorization`, so the API key's check used to refuse every admin call."""
    response = both.post("/admin/reload", headers=AS_ADMIN)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("headers", [AS_CLIENT, {}, {"Authorization": "Bearer nope"}])
def test_with_both_set_the_admin_routes_refuse_anything_but_the_admin_token(both, headers):
    for path in ("/admin/reload", "/admin/no-such-route"):  # nothing told about which exist
        response = both.post(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "admin token" in response.json()["detail"]


@pytest.mark.parametrize(
    "method, path, kwargs",
    [("post", "/sample", {"json": {"n": 1}}), ("get", "/model", {}), ("get", "/v2", {})],
)
def test_with_both_set_the_admin_token_opens_nothing_else(both, method, path, kwargs):
    refused = getattr(both, method)(path, headers=AS_ADMIN, **kwargs)
    assert refused.status_code == 401
    assert getattr(both, method)(path, headers=AS_CLIENT, **kwargs).status_code == 200


def test_a_draining_server_refuses_admin_calls_too(make_settings):
    """Skipping the API key under /admin skips nothing else the guard does."""
    with TestClient(create_app(make_settings(api_key=KEY, admin_token=ADMIN))) as client:
        client.app.state.lifecycle.begin_drain()
        response = client.post("/admin/reload", headers=AS_ADMIN)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


def test_401_says_what_is_missing(guarded):
    body = guarded.get("/model").json()
    assert "API key" in body["detail"]


@pytest.mark.parametrize(
    "variable, value", [("VAE_API_KEY", ""), ("VAE_API_KEY", "   "), ("VAE_ADMIN_TOKEN", " k")]
)
def test_a_blank_key_refuses_to_start_with_one_line(tiny_checkpoint, variable, value):
    """A blank key used to turn auth off without a word; now the server does not start."""
    done = start_that_stops(
        [*VAE_SERVE, "--port", "0"], server_env(tiny_checkpoint, **{variable: value})
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vae-serve: invalid configuration: {variable}: Value error, must not be empty or start "
        "or end with whitespace; unset it instead"
    ]


def test_plain_uvicorn_also_refuses_a_blank_key_with_one_line(tiny_checkpoint):
    env = server_env(tiny_checkpoint, VAE_API_KEY=" ")
    done = start_that_stops([*PLAIN_UVICORN, "--port", "0"], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "app.main: invalid configuration: VAE_API_KEY: Value error, must not be empty or start "
        "or end with whitespace; unset it instead"
    ]
