"""`vae-serve` with VAE_DEVICE=cuda where CUDA cannot start (compose's default on a host whose
NVIDIA driver is missing or older than the image's torch needs): one line that says what was
found, what is needed and how to serve on the CPU instead, and exit 2, before uvicorn starts.
torch's answers are faked, as a host without a GPU or with an old driver gives them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from app.server import cli
from models.device_errors import cuda_unavailable

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist-vae.pt"
TOO_OLD = (
    "The NVIDIA driver on your system is too old (found version 12020). Please update your GPU "
    "driver by downloading and installing a new version from the URL: "
    "http://www.nvidia.com/Download/index.aspx Alternatively, go to: https://pytorch.org to "
    "install a PyTorch version that has been compiled with your version of the CUDA driver."
)
NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
    "installed a driver from http://www.nvidia.com/Download/index.aspx"
)


def _serve_on_cuda(monkeypatch, capsys, init_error: str, built: str | None = "13.0") -> str:
    for key in [k for k in os.environ if k.startswith("VAE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("VAE_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def init():
        raise RuntimeError(init_error)

    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.version, "cuda", built)
    monkeypatch.setattr(cli, "serve", lambda *a, **k: pytest.fail("uvicorn must not start"))
    assert cli.main(["--checkpoint", str(SHIPPED)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_driver_too_old_for_the_images_torch_is_one_line_and_exit_2(monkeypatch, capsys):
    line = _serve_on_cuda(monkeypatch, capsys, TOO_OLD)
    assert line == (
        "vae-serve: cannot serve: device 'cuda' was requested but the NVIDIA driver here is too "
        f"old: it runs CUDA up to 12.2; this torch ({torch.__version__}) needs an NVIDIA driver "
        "for CUDA 13.0 (driver >= 580.65.06); to serve on the CPU instead: VAE_DEVICE=cpu "
        "(with compose: docker compose -f docker-compose.cpu.yml up -d)"
    )


def test_no_driver_at_all_is_one_line_and_exit_2(monkeypatch, capsys):
    line = _serve_on_cuda(monkeypatch, capsys, NO_DRIVER, built="12.8")
    assert "but no NVIDIA driver was found; " in line
    assert "needs an NVIDIA driver for CUDA 12.8 (driver >= 525.60.13)" in line
    assert line.endswith(
        "VAE_DEVICE=cpu (with compose: docker compose -f docker-compose.cpu.yml up -d)"
    )


def test_a_torch_built_without_cuda_says_so():
    line = cuda_unavailable("cuda", "Torch not compiled with CUDA enabled", "2.14.1+cpu", None)
    assert line == (
        "device 'cuda' was requested but this torch (2.14.1+cpu) is built without CUDA; "
        "install a CUDA build of torch"
    )


def test_an_unknown_failure_keeps_torchs_first_sentence():
    line = cuda_unavailable("cuda:1", "No CUDA GPUs are available. More words.", "2.14.1", "13.0")
    assert line.startswith("device 'cuda:1' was requested but CUDA did not start: No CUDA GPUs")
