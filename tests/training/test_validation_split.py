"""The validation split: held out of the training digits, fixed, and what selects best.pt; the
test set is read once, for the selected model."""

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, read_checkpoint
from training.data import load_split, train_validation_split, validation_indices
from training.evaluate import binarized_test_set, elbo_terms
from training.train import main as train_main


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mnist_train(mnist_dir):
    return load_split(mnist_dir, "mnist", train=True)


def test_ten_thousand_training_digits_are_held_out_and_the_rest_train(mnist_train):
    training, validation = train_validation_split(mnist_train)
    assert (len(training), len(validation)) == (50_000, 10_000)
    held_out = validation_indices(60_000, 10_000)
    assert torch.equal(validation.images, mnist_train.images[held_out])
    assert torch.equal(validation.labels, mnist_train.labels[held_out])
    kept = torch.ones(60_000, dtype=torch.bool)
    kept[held_out] = False
    assert torch.equal(training.images, mnist_train.images[kept])
    assert len(set(held_out.tolist())) == 10_000
    assert set(validation.labels.tolist()) == set(range(10))


def test_the_split_is_the_same_every_time_and_a_different_seed_moves_it():
    fixed = validation_indices(60_000, 10_000)
    assert torch.equal(fixed, validation_indices(60_000, 10_000))
    assert not torch.equal(fixed, validation_indices(60_000, 10_000, seed=1))


def test_an_impossible_validation_size_is_refused(mnist_train):
    with pytest.raises(ValueError, match="validation size"):
        train_validation_split(mnist_train, 60_000)


def test_best_pt_holds_the_epoch_with_the_lowest_validation_elbo(tiny_run):
    rows = _rows(tiny_run)
    best_row = min(rows, key=lambda r: r["val_neg_elbo"])
    best, best_meta = load_checkpoint(tiny_run / "best.pt")
    last, last_meta = load_checkpoint(tiny_run / "model.pt")
    assert best_meta["epoch"] == best_row["epoch"]
    assert best_meta["metrics"]["val_neg_elbo"] == pytest.approx(best_row["val_neg_elbo"])
    assert last_meta["epoch"] == rows[-1]["epoch"]
    assert "train_state" not in read_checkpoint(tiny_run / "best.pt")


def test_only_the_selected_model_is_scored_on_the_test_set(tiny_run, mnist_test):
    """best.pt carries the test -ELBO of its own weights on the first 500 test digits
    (--eval-limit 500); the per-epoch rows and model.pt carry validation numbers only."""
    best, meta = load_checkpoint(tiny_run / "best.pt")
    x = binarized_test_set(mnist_test.images[:500], seed=0, device=torch.device("cpu"))
    assert meta["metrics"]["test_neg_elbo"] == pytest.approx(elbo_terms(best, x)["neg_elbo"])
    assert meta["metrics"]["test_images"] == 500
    assert not any(key.startswith("test_") for row in _rows(tiny_run) for key in row)
    _, last_meta = load_checkpoint(tiny_run / "model.pt")
    assert not any(key.startswith("test_") for key in last_meta["metrics"])


def test_the_checkpoint_says_which_digits_trained_and_which_selected(tiny_run):
    _, meta = load_checkpoint(tiny_run / "best.pt")
    split = meta["data_split"]
    assert split["training_digits"] == 2000  # --subset 2000 of the 50,000 not held out
    assert split["validation_digits"] == 10_000 and split["validation_seed"] == 0
    assert "500 validation digits" in split["selected_on"]


def test_export_copies_the_selected_model(tmp_path, mnist_dir):
    args = "--preset tiny --epochs 1 --subset 400 --eval-limit 100 --device cpu --no-progress"
    out, export = tmp_path / "run", tmp_path / "shipped.pt"
    argv = [*args.split(), "--data-dir", str(mnist_dir), "--out", str(out), "--export", str(export)]
    assert train_main(argv) == 0
    exported, meta = load_checkpoint(export)
    best, _ = load_checkpoint(out / "best.pt")
    for name, weights in best.state_dict().items():
        assert torch.equal(weights, exported.state_dict()[name]), name
    assert "test_neg_elbo" in meta["metrics"]
