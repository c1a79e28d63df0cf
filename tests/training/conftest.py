"""Fixtures for the model and training tests: real MNIST and a real (tiny) trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import load_split, provision
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The repository's data folder, provisioned once (download, else the offline source)."""
    data_dir = REPO / "data"
    provision(data_dir, "mnist")
    return data_dir


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_split(mnist_dir, "mnist", train=False)


@pytest.fixture(scope="session")
def tiny_run(mnist_dir, tmp_path_factory) -> Path:
    """Three epochs of the tiny preset on 2,000 digits: a real checkpoint in a few seconds."""
    out = tmp_path_factory.mktemp("tiny-run")
    args = "--preset tiny --epochs 3 --subset 2000 --eval-limit 500 --device cpu --no-progress"
    code = train_main([*args.split(), "--data-dir", str(mnist_dir), "--out", str(out)])
    assert code == 0
    return out
