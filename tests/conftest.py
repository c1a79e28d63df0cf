"""Shared fixtures: small real checkpoints trained in seconds, and apps that serve them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from models.checkpoint import load_checkpoint, save_checkpoint
from training import train
from training.data import provision

REPO = Path(__file__).resolve().parent.parent
# The trained model the upload tests judge (`VAE_TEST_CHECKPOINT` to judge another)
GOOD_CHECKPOINT = Path(os.environ.get("VAE_TEST_CHECKPOINT", REPO / "models" / "mnist-vae.pt"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The repository's data folder, provisioned once (download, else the offline source)."""
    data_dir = REPO / "data"
    provision(data_dir, "mnist")
    return data_dir


@pytest.fixture(scope="session")
def tiny_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one training run of a test session: the `tiny` preset, two epochs on 2,000 digits
    (seconds on a CPU). Its folder holds everything `vae-train` writes."""
    out = tmp_path_factory.mktemp("tiny-run")
    args = "--preset tiny --epochs 2 --subset 2000 --eval-limit 500 --device cpu --no-progress"
    assert train.main([*args.split(), "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    """The served model of that run: a real checkpoint for the API tests."""
    return tiny_run / "model.pt"


@pytest.fixture(scope="session")
def second_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network with its weights nudged: a different file and sha256, same shape."""
    model, metadata = load_checkpoint(tiny_checkpoint)
    for parameter in model.parameters():
        parameter.data.mul_(0.9)
    path = tmp_path_factory.mktemp("second") / "model.pt"
    return save_checkpoint(path, model, {**metadata, "note": "second checkpoint"})


@pytest.fixture(scope="session")
def prior_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint plus a learned prior (vae-fit-prior on 2,000 of its training digits:
    two components per digit), so that /sample can draw a chosen digit."""
    from training.fit_prior import main as fit_prior_main

    out = tmp_path_factory.mktemp("with-prior") / "model.pt"
    argv = [str(tiny_checkpoint), "--out", str(out), "--data-dir", str(REPO / "data")]
    argv += ["--limit", "2000", "--class-components", "2", "--accept-threshold", "0.9"]
    assert fit_prior_main(argv) == 0
    return out


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vae-export` of the shipped checkpoint and guide, in-process, once a session: the folder
    (its `manifest.json` serves it). Tests that use it skip where the shipped files are absent."""
    from app.inference.artifact import export_writer as export

    checkpoint, guide = REPO / "models" / "mnist-vae.pt", REPO / "models" / "mnist-digit-guide.pt"
    if not (checkpoint.is_file() and guide.is_file()):
        pytest.skip("the shipped model and guide are needed")
    out = tmp_path_factory.mktemp("shipped-export")
    argv = ["--checkpoint", str(checkpoint), "--digit-guide", str(guide), "--out", str(out)]
    assert export.main([*argv, "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def make_settings(tiny_checkpoint: Path):
    """`make_settings(**overrides)`: the tiny checkpoint on the CPU, no API key or admin token."""

    def make(**overrides) -> Settings:
        base = {"checkpoint": tiny_checkpoint, "device": "cpu"}
        return Settings(**{**base, "api_key": None, "admin_token": None, **overrides})

    return make


@pytest.fixture(scope="session")
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan running (model loaded and warmed), shared by a test module."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def digit_png() -> bytes:
    """A real MNIST test digit (a 7) as a 28x28 PNG, from the bundled examples."""
    return (REPO / "app" / "images" / "example_digits" / "7-0.png").read_bytes()


@asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
def serving():
    """`async with serving(settings) as client:` an async httpx client on a started app."""
    return _serving


@pytest.fixture(scope="module")
def good_client(make_settings) -> Iterator[TestClient]:
    """A test client serving `GOOD_CHECKPOINT`: what uploads become needs a trained model."""
    if not GOOD_CHECKPOINT.is_file():
        pytest.skip(f"needs a trained model at {GOOD_CHECKPOINT} (train it with `make train`)")
    with TestClient(create_app(make_settings(checkpoint=GOOD_CHECKPOINT))) as client:
        yield client
