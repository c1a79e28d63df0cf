"""vae-train on CUDA: `--deterministic` gives bit-identical weights there too (on the CPU:
tests/training/test_deterministic.py). Skipped without CUDA.

Needs no conftest (`make gpu-check` runs `pytest --noconftest tests/gpu` on a machine without
the web stack): MNIST comes from data/, provisioned by scripts/gpu_check.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from training.data import provision
from training.train import main as train_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = Path(__file__).resolve().parents[2] / "data"
SHORT = "--preset default --epochs 1 --subset 2000 --eval-limit 500 --no-progress --device cuda"


def _train(out: Path) -> dict[str, torch.Tensor]:
    provision(DATA, "mnist")
    argv = [*SHORT.split(), "--deterministic", "--data-dir", str(DATA), "--out", str(out)]
    assert train_main(argv) == 0
    return load_checkpoint(out / "model.pt")[0].state_dict()


def test_two_cuda_runs_with_the_same_seed_give_bit_identical_weights(tmp_path):
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    for name, weights in first.items():
        assert torch.equal(weights, second[name]), name
