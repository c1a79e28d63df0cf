"""A resumed run carries on with the generators it stopped with: on CUDA the device's too (the
forward pass draws its noise there), and a checkpoint without it (older, or saved on the CPU) still
resumes, with a warning that it is not bit-identical. CUDA's calls are faked: this runs on the CPU;
tests/gpu/test_cuda_training.py resumes a real CUDA run."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from training import train


def _run(device: str) -> SimpleNamespace:
    return SimpleNamespace(
        cuda=device.startswith("cuda"),
        device=torch.device(device),
        batches=SimpleNamespace(generator=torch.Generator().manual_seed(5)),
        ddp=SimpleNamespace(is_main=True),
        ckpt_path="runs/x/checkpoint.pt",
    )


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's generator calls, recorded: a state per device."""
    states: dict[torch.device, torch.Tensor] = {}
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device: states.setdefault(device, torch.arange(4))
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: states.__setitem__(device, state)
    )
    return states


def test_on_cuda_the_device_generator_is_saved_and_put_back(fake_cuda):
    run = _run("cuda:0")
    saved = train._rng_states(run)
    assert torch.equal(saved["cuda_rng"], torch.arange(4))
    fake_cuda[run.device] = torch.zeros(4)  # the resumed process starts from another state
    run.batches.generator.manual_seed(99)
    train._restore_rng_states(run, saved)
    assert torch.equal(fake_cuda[run.device], torch.arange(4))
    assert torch.equal(run.batches.generator.get_state(), saved["data_rng"])


def test_on_the_cpu_no_cuda_state_is_saved_or_touched(fake_cuda):
    run = _run("cpu")
    saved = train._rng_states(run)
    assert "cuda_rng" not in saved
    train._restore_rng_states(run, {**saved, "cuda_rng": torch.ones(4)})  # saved on a GPU
    assert fake_cuda == {}


def test_an_older_checkpoint_resumes_on_cuda_and_says_it_is_not_bit_identical(fake_cuda, caplog):
    run = _run("cuda:0")
    older = {k: v for k, v in train._rng_states(_run("cpu")).items()}
    with caplog.at_level(logging.WARNING, logger="vae-train"):
        train._restore_rng_states(run, older)
    assert "not bit-identical" in caplog.text
