"""vae-train end to end on real MNIST: it learns, it resumes, it survives SIGTERM, it runs DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, read_checkpoint
from training.data import dataset_sha256, load_split, train_validation_split
from training.evaluate import active_units, binarized_test_set, elbo_terms
from training.objective import LOSSES
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "mnist-vae.pt"


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(out, mnist_dir, *extra):
    args = "--preset tiny --subset 2000 --eval-limit 500 --device cpu --no-progress".split()
    return train_main([*args, "--data-dir", str(mnist_dir), "--out", str(out), *extra])


def test_short_run_improves_the_validation_elbo_and_writes_its_artifacts(tiny_run):
    rows = _rows(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["val_neg_elbo"] < rows[0]["val_neg_elbo"] - 20
    for name in ("model.pt", "best.pt", "checkpoint.pt", "config.toml", "metrics.csv"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "loss_curve.png").is_file()
    assert len(list((tiny_run / "samples").glob("epoch_*.png"))) == 2
    assert "train_state" not in read_checkpoint(tiny_run / "model.pt")


def test_model_metadata_describes_the_weights_and_data_it_holds(tiny_run, mnist_dir):
    """Recomputed here: the digest of the data on disk, and the ELBO of the stored weights on
    the same 500 validation digits (--eval-limit 500) that training evaluated."""
    model, meta = load_checkpoint(tiny_run / "model.pt")
    assert meta["epoch"] == _rows(tiny_run)[-1]["epoch"]
    assert meta["dataset"] == {"name": "mnist", "sha256": dataset_sha256(mnist_dir, "mnist")}
    _, validation = train_validation_split(load_split(mnist_dir, "mnist", train=True))
    x = binarized_test_set(validation.images[:500], seed=0, device=torch.device("cpu"))
    val = elbo_terms(model, x)
    assert meta["metrics"]["val_neg_elbo"] == pytest.approx(val["neg_elbo"], rel=1e-5)
    assert meta["metrics"]["val_kl"] == pytest.approx(val["kl"], rel=1e-5)
    assert meta["metrics"]["active_units"] == active_units(model, x)


def test_a_subset_smaller_than_one_batch_is_a_clear_error(tmp_path, mnist_dir):
    with pytest.raises(SystemExit, match="no full batch"):
        _train(tmp_path, mnist_dir, "--subset", "50", "--epochs", "1")


def _interrupt_at_step(monkeypatch, step: int) -> None:
    """SIGTERM arrives during training step `step` (0-based, counted over the whole run)."""
    loss_fn, calls = LOSSES["bernoulli"], []

    def loss_then_signal(*args, **kwargs):
        if len(calls) == step:
            signal.raise_signal(signal.SIGTERM)
        calls.append(step)
        return loss_fn(*args, **kwargs)

    monkeypatch.setitem(LOSSES, "bernoulli", loss_then_signal)


def test_resume_after_an_interrupt_trains_exactly_the_uninterrupted_run(
    tmp_path, mnist_dir, monkeypatch
):
    """4 steps per epoch; SIGTERM in step 6 (epoch 2, its 3rd step). The checkpoint says so,
    and resuming finishes epoch 2 from there: the same weights as a run never interrupted."""
    small = ["--subset", "400", "--eval-limit", "100", "--epochs", "2"]
    assert _train(tmp_path / "straight", mnist_dir, *small) == 0

    with monkeypatch.context() as patch:
        _interrupt_at_step(patch, 6)
        assert _train(tmp_path / "stopped", mnist_dir, *small) == 128 + signal.SIGTERM
    saved = read_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert (saved["train_state"]["epoch"], saved["train_state"]["step"]) == (1, 3)
    assert (saved["metadata"]["epoch"], saved["metadata"]["step"]) == (1, 3)
    assert [r["epoch"] for r in _rows(tmp_path / "stopped")] == [1]

    assert _train(tmp_path / "stopped", mnist_dir, *small, "--resume") == 0
    straight, _ = load_checkpoint(tmp_path / "straight" / "model.pt")
    resumed, meta = load_checkpoint(tmp_path / "stopped" / "model.pt")
    assert meta["epoch"] == 2
    resumed_weights = resumed.state_dict()
    for name, weights in straight.state_dict().items():
        assert torch.equal(weights, resumed_weights[name]), name
    keep = ("epoch", "train_loss", "val_neg_elbo", "val_kl", "active_units")
    rows = [[{k: r[k] for k in keep} for r in _rows(tmp_path / d)] for d in ("straight", "stopped")]
    assert rows[0] == rows[1]


def test_resume_continues_from_the_last_epoch(tiny_run, tmp_path, mnist_dir):
    """A copy of the shared two-epoch run, resumed for a third epoch."""
    out = shutil.copytree(tiny_run, tmp_path / "run")
    first = read_checkpoint(out / "checkpoint.pt")
    assert (first["train_state"]["epoch"], first["train_state"]["step"]) == (2, 0)
    assert _train(out, mnist_dir, "--epochs", "3", "--resume") == 0
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3]
    resumed = read_checkpoint(out / "checkpoint.pt")
    assert resumed["train_state"]["epoch"] == 3
    per_epoch = first["train_state"]["scheduler"]["last_epoch"] // 2
    scheduler = resumed["train_state"]["scheduler"]
    assert scheduler["last_epoch"] == 3 * per_epoch  # the optimizer went on
    assert scheduler["lr_lambdas"][0]["total_steps"] == 3 * per_epoch  # planned for 3 epochs


def test_sigterm_leaves_a_valid_checkpoint(tmp_path, mnist_dir):
    args = "--preset tiny --epochs 1000 --subset 2000 --eval-limit 200 --device cpu --no-progress"
    cmd = [sys.executable, "-m", "training", *args.split()]
    cmd += ["--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM
    payload = read_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["train_state"]["epoch"] >= 1
    more = str(payload["train_state"]["epoch"] + 1)
    assert _train(tmp_path, mnist_dir, "--epochs", more, "--resume") == 0


def test_two_process_gloo_ddp_run(tmp_path, mnist_dir):
    ddp = "--standalone --nproc_per_node=2".split()
    args = "--preset tiny --epochs 1 --subset 2000 --eval-limit 200 --device cpu --no-progress"
    cmd = [sys.executable, "-m", "torch.distributed.run", *ddp, "-m", "training", *args.split()]
    cmd += ["--data-dir", str(mnist_dir), "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "x2" in result.stderr  # "... on cpu x2": both ranks joined
    rows = _rows(tmp_path)
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    load_checkpoint(tmp_path / "model.pt")


def test_seed_loss_still_collapses_the_posterior(tmp_path, mnist_dir):
    """The notebook's loss on the notebook's network: KL goes to ~0 and no latent is used,
    while the Bernoulli ELBO on the same network and data keeps an informative posterior."""
    common = ["--preset", "seed", "--epochs", "2", "--betas", "0.5", "0.999"]
    assert _train(tmp_path / "mse", mnist_dir, *common, "--loss", "seed-mse") == 0
    assert _train(tmp_path / "elbo", mnist_dir, *common) == 0
    mse, elbo = _rows(tmp_path / "mse")[-1], _rows(tmp_path / "elbo")[-1]
    assert mse["val_kl"] < 0.5 and mse["active_units"] == 0
    assert elbo["val_kl"] > 3 and elbo["active_units"] >= 5


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/mnist-vae.pt is not in this checkout")
def test_shipped_checkpoint_is_good(mnist_test):
    model, meta = load_checkpoint(SHIPPED)
    assert meta["preset"] == "default"
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024
    assert meta["metrics"]["iwae_k"] == 1000 and meta["metrics"]["iwae_nll"] <= 86
    x = binarized_test_set(mnist_test.images[:500], seed=0, device=torch.device("cpu"))
    assert elbo_terms(model, x)["neg_elbo"] < 92  # recomputed here, on the CPU
    assert active_units(model, x) >= 10
