"""vae-train end to end on real MNIST: it learns, it resumes, it survives SIGTERM, it runs DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, read_checkpoint
from training.evaluate import active_units, binarized_test_set, elbo_terms
from training.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "mnist-vae.pt"


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(out, mnist_dir, *extra):
    args = "--preset tiny --subset 2000 --eval-limit 500 --device cpu --no-progress".split()
    return train_main([*args, "--data-dir", str(mnist_dir), "--out", str(out), *extra])


def test_short_run_improves_the_test_elbo_and_writes_its_artifacts(tiny_run):
    rows = _rows(tiny_run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["test_neg_elbo"] < rows[0]["test_neg_elbo"] - 20
    for name in ("model.pt", "checkpoint.pt", "metrics.csv", "loss_curve.png"):
        assert (tiny_run / name).is_file(), name
    assert len(list((tiny_run / "samples").glob("epoch_*.png"))) == 3
    _, meta = load_checkpoint(tiny_run / "model.pt")
    assert meta["epoch"] == 3 and meta["dataset"]["name"] == "mnist"
    assert len(meta["dataset"]["sha256"]) == 64
    assert "train_state" not in read_checkpoint(tiny_run / "model.pt")


def test_resume_continues_from_the_last_epoch(tmp_path, mnist_dir):
    assert _train(tmp_path, mnist_dir, "--epochs", "1") == 0
    first = read_checkpoint(tmp_path / "checkpoint.pt")
    assert first["train_state"]["epoch"] == 1
    assert _train(tmp_path, mnist_dir, "--epochs", "2", "--resume") == 0
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    resumed = read_checkpoint(tmp_path / "checkpoint.pt")
    assert resumed["train_state"]["epoch"] == 2
    per_epoch = first["train_state"]["scheduler"]["last_epoch"]
    scheduler = resumed["train_state"]["scheduler"]
    assert scheduler["last_epoch"] == 2 * per_epoch  # the optimizer went on
    assert scheduler["lr_lambdas"][0]["total_steps"] == 2 * per_epoch  # planned for 2 epochs


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
    assert mse["test_kl"] < 0.5 and mse["active_units"] == 0
    assert elbo["test_kl"] > 3 and elbo["active_units"] >= 5


@pytest.mark.skipif(not SHIPPED.exists(), reason="models/mnist-vae.pt is not in this checkout")
def test_shipped_checkpoint_is_good(mnist_test):
    model, meta = load_checkpoint(SHIPPED)
    assert meta["preset"] == "default"
    assert SHIPPED.stat().st_size <= 10 * 1024 * 1024
    assert meta["metrics"]["iwae_k"] == 1000 and meta["metrics"]["iwae_nll"] <= 86
    x = binarized_test_set(mnist_test.images[:500], seed=0, device=torch.device("cpu"))
    assert elbo_terms(model, x)["neg_elbo"] < 92  # recomputed here, on the CPU
    assert active_units(model, x) >= 10
