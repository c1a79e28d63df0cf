"""The checkpoint format: round trip, and one clear error for every way a file can be wrong."""

import os
import pickle

import numpy as np
import pytest
import torch

from models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_checkpoint_and_prior,
    read_checkpoint,
    save_checkpoint,
)
from models.prior import Mixture, MixturePrior, StandardNormal
from models.vae import build_model


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = build_model("tiny").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"preset": "tiny", "metrics": {"x": 1.5}})
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])
    assert loaded.config == model.config
    assert not loaded.training
    assert meta["preset"] == "tiny" and meta["metrics"] == {"x": 1.5}
    assert {"torch_version", "created_at", "git_commit"} <= set(meta)


def test_save_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    model = build_model("tiny")
    save_checkpoint(tmp_path / "m.pt", model, {})
    save_checkpoint(tmp_path / "m.pt", model, {"again": True})
    assert os.listdir(tmp_path) == ["m.pt"]
    assert load_checkpoint(tmp_path / "m.pt")[1]["again"] is True


def test_a_crash_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny"), {"generation": 1})
    before = path.read_bytes()

    def write_half_then_crash(payload, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_model("tiny"), {"generation": 2})
    assert os.listdir(tmp_path) == ["m.pt"]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert load_checkpoint(path)[1]["generation"] == 1


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mnist-vae-checkpoint", "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="not a safe checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(tmp_path / "pwned")))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_text_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is a text file, not a checkpoint\n" * 30)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path)


def test_a_foreign_torch_file_is_not_ours(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a mnist-vae-checkpoint"):
        load_checkpoint(path)


def test_unsupported_version(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny"), {})
    payload = read_checkpoint(path)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)


def test_config_and_weights_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny"), {})
    payload = read_checkpoint(path)
    payload["model_config"]["latent_dim"] = 9
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="model config"):  # caught by size or by shape
        load_checkpoint(path)


def test_invalid_config(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny"), {})
    payload = read_checkpoint(path)
    payload["model_config"]["activation"] = "sparkle"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(path)


def _mixture_prior(dim: int) -> MixturePrior:
    """Two components per digit 0 and 1, with the class mixture doubling as the prior."""
    rng = np.random.default_rng(0)
    classes = Mixture(
        np.full(4, 0.25, np.float32),
        (rng.standard_normal((4, dim)) * 3).astype(np.float32),
        np.broadcast_to(np.eye(dim, dtype=np.float32) * 0.5, (4, dim, dim)).copy(),
        labels=np.array([0, 0, 1, 1]),
    )
    return MixturePrior(classes, classes=classes, accept_threshold=0.9, config={"fit": "test"})


def test_a_learned_prior_round_trips_through_a_weights_only_load(tmp_path):
    model = build_model("tiny").eval()
    prior = _mixture_prior(model.latent_dim)
    path = save_checkpoint(tmp_path / "m.pt", model, {}, prior=prior)
    stored = torch.load(path, weights_only=True)["prior"]  # plain tensors and numbers only
    assert stored["mixture"]["weights"].dtype == torch.float32
    assert stored["mixture"]["labels"].dtype == torch.int64
    loaded, _, back = load_checkpoint_and_prior(path)
    assert read_checkpoint(path)["format_version"] == FORMAT_VERSION == 2
    assert isinstance(back, MixturePrior) and back.digits() == [0, 1]
    z = np.random.default_rng(1).standard_normal((5, model.latent_dim))
    assert np.array_equal(back.log_prob(z), prior.log_prob(z))
    assert back.config == {"fit": "test"} and back.accept_threshold == 0.9


def test_without_a_prior_and_at_version_1_the_prior_is_the_standard_normal(tmp_path):
    model = build_model("tiny").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    assert isinstance(load_checkpoint_and_prior(path)[2], StandardNormal)
    payload = read_checkpoint(path)
    payload["format_version"] = 1  # what every checkpoint written before priors looks like
    torch.save(payload, path)
    loaded, _, prior = load_checkpoint_and_prior(path)
    assert isinstance(prior, StandardNormal) and prior.dim == model.latent_dim
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(loaded.encode(x)[0], model.encode(x)[0])


def test_a_broken_or_mismatched_prior_is_one_clear_error(tmp_path):
    model = build_model("tiny")
    path = save_checkpoint(tmp_path / "m.pt", model, {}, prior=_mixture_prior(model.latent_dim))
    payload = read_checkpoint(path)
    payload["prior"]["mixture"]["weights"] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid prior: .*sum to 1"):
        load_checkpoint(path)
    save_checkpoint(path, model, {}, prior=_mixture_prior(model.latent_dim + 1))
    with pytest.raises(CheckpointError, match="prior over 9 dims for a 8-dim latent"):
        load_checkpoint(path)
