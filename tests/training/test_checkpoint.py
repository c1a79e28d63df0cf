"""The checkpoint format: round trip, and one clear error for every way a file can be wrong."""

import os
import pickle

import pytest
import torch

from models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
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


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = build_model("tiny")
    save_checkpoint(tmp_path / "m.pt", model, {})
    save_checkpoint(tmp_path / "m.pt", model, {"again": True})
    assert os.listdir(tmp_path) == ["m.pt"]


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
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)


def test_invalid_config(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny"), {})
    payload = read_checkpoint(path)
    payload["model_config"]["activation"] = "sparkle"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_checkpoint(path)
