"""VAE_API_KEY: every route but health, readiness and metrics needs `Authorization: Bearer`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

KEY = "s3cret-key"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update({"VAE_CHECKPOINT": str(tiny_checkpoint), variable: value})
    done = subprocess.run(
        [sys.executable, "-m", "app.server.cli", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vae-serve: invalid configuration: {variable}: Value error, must not be empty or start "
        "or end with whitespace; unset it instead"
    ]


def test_plain_uvicorn_also_refuses_a_blank_key_with_one_line(tiny_checkpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update({"VAE_CHECKPOINT": str(tiny_checkpoint), "VAE_API_KEY": " "})
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "app.main: invalid configuration: VAE_API_KEY: Value error, must not be empty or start "
        "or end with whitespace; unset it instead"
    ]
