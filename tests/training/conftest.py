"""Fixtures for the model and training tests (`mnist_dir` and the shared `tiny_run` live in
tests/conftest.py, so the API tests reuse the same trained checkpoint)."""

from __future__ import annotations

import pytest

from training.data import load_split


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_split(mnist_dir, "mnist", train=False)
