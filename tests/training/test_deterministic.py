"""vae-train --deterministic: the same seed, bit-identical weights."""

import torch

from models.checkpoint import load_checkpoint
from training.objective import LOSSES
from training.train import main as train_main

SHORT = "--preset tiny --epochs 1 --subset 400 --eval-limit 100 --device cpu --no-progress"


def _weights(out):
    return load_checkpoint(out / "model.pt")[0].state_dict()


def _train(out, mnist_dir, *extra):
    argv = [*SHORT.split(), "--deterministic", *extra, "--data-dir", str(mnist_dir)]
    assert train_main([*argv, "--out", str(out)]) == 0
    return _weights(out)


def test_two_runs_with_the_same_seed_give_bit_identical_weights(tmp_path, mnist_dir):
    first = _train(tmp_path / "a", mnist_dir)
    second = _train(tmp_path / "b", mnist_dir)
    other_seed = _train(tmp_path / "c", mnist_dir, "--seed", "1")
    for name, weights in first.items():
        assert torch.equal(weights, second[name]), name
    assert any(not torch.equal(w, other_seed[name]) for name, w in first.items())


def test_deterministic_kernels_are_on_during_the_run_and_off_after(
    tmp_path, mnist_dir, monkeypatch
):
    seen = []
    loss_fn = LOSSES["bernoulli"]

    def recording_loss(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return loss_fn(*args, **kwargs)

    monkeypatch.setitem(LOSSES, "bernoulli", recording_loss)
    _train(tmp_path, mnist_dir)
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()
