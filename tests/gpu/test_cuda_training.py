"""vae-train on CUDA: `--deterministic` gives bit-identical weights there too (on the CPU:
tests/training/test_deterministic.py), and a run interrupted and resumed ends with the weights of
one never interrupted (the CUDA generator is saved with the training state). Skipped without CUDA.

Needs no conftest (`make gpu-check` runs `pytest --noconftest tests/gpu` on a machine without
the web stack): MNIST comes from data/, provisioned by scripts/gpu_check.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, read_checkpoint
from training.data import provision
from training.objective import LOSSES
from training.train import main as train_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA = Path(__file__).resolve().parents[2] / "data"
SHORT = "--preset default --epochs 1 --subset 2000 --eval-limit 500 --no-progress --device cuda"


def _train(out: Path, *extra: str, code: int = 0) -> dict[str, torch.Tensor] | None:
    provision(DATA, "mnist")
    argv = [*SHORT.split(), "--deterministic", "--data-dir", str(DATA), "--out", str(out), *extra]
    assert train_main(argv) == code
    return load_checkpoint(out / "model.pt")[0].state_dict() if code == 0 else None


def test_two_cuda_runs_with_the_same_seed_give_bit_identical_weights(tmp_path):
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b")
    for name, weights in first.items():
        assert torch.equal(weights, second[name]), name


def test_a_cuda_run_interrupted_and_resumed_ends_bit_identical(tmp_path, monkeypatch):
    """SIGTERM in step 20 of 2 epochs of 15 steps (epoch 2, its 6th step); --resume finishes."""
    small = ["--epochs", "2", "--subset", "1500", "--batch-size", "100"]
    straight = _train(tmp_path / "straight", *small)
    loss_fn, calls = LOSSES["bernoulli"], []

    def loss_then_signal(*args, **kwargs):
        if len(calls) == 20:
            signal.raise_signal(signal.SIGTERM)
        calls.append(1)
        return loss_fn(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setitem(LOSSES, "bernoulli", loss_then_signal)
        _train(tmp_path / "stopped", *small, code=128 + signal.SIGTERM)
    saved = read_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["train_state"]
    assert (saved["epoch"], saved["step"]) == (1, 6) and "cuda_rng" in saved
    resumed = _train(tmp_path / "stopped", *small, "--resume")
    for name, weights in straight.items():
        assert torch.equal(weights, resumed[name]), name
