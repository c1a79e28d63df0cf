"""/admin/reload loads only from the checkpoint directory (issue 12, problem 4).

Any path answers 4xx, never 500; paths outside the directory are refused the same way whether
or not they exist, so the route tells nothing about the server's files.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.errors import NotFound, ReloadPathRefused
from app.main import create_app
from app.routes.checkpoint_paths import checkpoint_root, resolve_checkpoint
from models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from models.vae import VAEConfig

TOKEN = "admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_checkpoint: Path, second_checkpoint: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    shutil.copy(tiny_checkpoint, root / "model.pt")
    shutil.copy(second_checkpoint, root / "second.pt")
    (root / "sub").mkdir()
    shutil.copy(second_checkpoint, root / "sub" / "nested.pt")
    (root / "escape.pt").symlink_to(tiny_checkpoint)  # a link out of the directory
    (root / "inside-link.pt").symlink_to(root / "second.pt")
    return root


@pytest.fixture(scope="module")
def admin(make_settings, checkpoint_dir):
    settings = make_settings(checkpoint=checkpoint_dir / "model.pt", admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("name", ["second.pt", "sub/nested.pt", "inside-link.pt", "./second.pt"])
def test_files_inside_the_directory_load(admin, checkpoint_dir, name):
    response = admin.post("/admin/reload", json={"checkpoint": name}, headers=AUTH)
    assert response.status_code == 200, response.text
    absolute = admin.post(
        "/admin/reload", json={"checkpoint": str(checkpoint_dir / name)}, headers=AUTH
    )
    assert absolute.status_code == 200, absolute.text


@pytest.mark.parametrize(
    "path, status",
    [
        ("/etc/passwd", 403),
        ("/etc/does-not-exist", 403),  # the same answer as for a file that exists
        ("/proc/self/fd/0", 403),
        ("/proc/self/environ", 403),
        ("../model.pt", 403),
        ("sub/../../x.pt", 403),
        ("escape.pt", 403),  # a symlink out of the directory
        ("nope.pt", 404),
        ("sub", 404),  # a directory is not a checkpoint
        ("model.pt\x00.txt", 422),
        ("a" * 300 + ".pt", 422),
        ("x/" * 2100, 422),  # over 4096 characters: the schema's limit
        ("", 422),
        ("   ", 422),
        ("bad\nname.pt", 422),
    ],
)
def test_every_other_path_gets_a_4xx_json_error(admin, path, status):
    response = admin.post("/admin/reload", json={"checkpoint": path}, headers=AUTH)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str | list)
    assert "/etc" not in str(response.json()) or path.startswith("/etc")


def test_refusals_outside_do_not_tell_whether_a_file_exists(admin):
    answers = [
        admin.post("/admin/reload", json={"checkpoint": p}, headers=AUTH).json()["detail"]
        for p in ("/etc/passwd", "/etc/no-such-file")
    ]
    assert [a.replace("passwd", "X").replace("no-such-file", "X") for a in answers] == [
        answers[0].replace("passwd", "X")
    ] * 2


def test_checkpoint_root_refuses_proc_and_sys():
    for bad in ("/proc", "/proc/self", "/sys/kernel", "/dev"):
        with pytest.raises(ValueError):
            checkpoint_root(Path(bad))


def test_resolve_checkpoint_directly(checkpoint_dir):
    root = checkpoint_root(checkpoint_dir)
    assert resolve_checkpoint("second.pt", root) == root / "second.pt"
    with pytest.raises(ReloadPathRefused):
        resolve_checkpoint("escape.pt", root)
    with pytest.raises(NotFound):
        resolve_checkpoint("missing.pt", root)


def test_an_oversized_config_is_refused_before_anything_is_allocated(tiny_checkpoint, tmp_path):
    """A 1 KB change to the config once made the server allocate 1.1 GB before refusing."""
    payload = read_checkpoint(tiny_checkpoint)
    payload["model_config"] = {**payload["model_config"], "channels": [4096, 4096]}
    path = tmp_path / "huge.pt"
    torch.save(payload, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="needs .* values but the file holds"):
        load_checkpoint(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize(
    "change",
    [{"latent_dim": 10**9}, {"channels": [8, 10**7]}, {"res_blocks": 10**6}, {"channels": [0, 8]}],
)
def test_absurd_config_values_are_refused(tiny_checkpoint, tmp_path, change):
    payload = read_checkpoint(tiny_checkpoint)
    payload["model_config"] = {**payload["model_config"], **change}
    path = tmp_path / "absurd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_the_shipped_config_is_well_within_the_limits(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    assert isinstance(model.config, VAEConfig)
    assert os.path.getsize(tiny_checkpoint) < 1 << 30
