"""A checkpoint made ready to serve: loaded, moved, given its checked backend, and warmed.

`LoadedModel` is immutable, so a reload builds the next one on the side and the engine swaps one
reference; requests in flight finish on the model they started with.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from app.config import DEFAULT_DIGIT_GUIDE, Settings
from app.inference.backends.base import BackendInfo, Runner
from app.inference.backends.eager import TorchRunner
from app.inference.backends.select import select_runner
from models.checkpoint import CheckpointError, file_sha256, load_checkpoint_and_prior
from models.classifier import ClassifierError
from models.digit_guide import DigitGuide, load_guide
from models.prior import LatentPrior
from models.runtime import resolve_device
from models.vae import ConvVAE

log = logging.getLogger("app.engine")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One checkpoint, loaded and warmed; immutable, so it can be shared across threads."""

    model: ConvVAE
    metadata: dict[str, Any]
    checkpoint: Path
    sha256: str
    device: torch.device
    dtype: torch.dtype
    runner: Runner  # where the forward passes run; checked against eager at load
    backend: BackendInfo
    prior: LatentPrior  # the checkpoint's own; N(0, I) when it carries none
    # How answers name the checkpoint: as the caller of a reload named it, never the server's
    # absolute path (None: `checkpoint` as configured).
    shown_as: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim


def load_model(
    path: str | Path,
    device: str = "auto",
    fp16: bool = False,
    max_batch_size: int = 64,
    *,
    backend: str = "auto",
    threads: int = 1,
    cuda_graphs: bool = False,
) -> LoadedModel:
    """Loads, moves and warms a checkpoint with the backend `select_runner` picks; raises
    `CheckpointError` with a one-line reason."""
    dev = resolve_device(device)
    before = _file_identity(path)
    model, metadata, prior = load_checkpoint_and_prior(path, device=dev)
    sha256 = file_sha256(path)
    if _file_identity(path) != before:  # replaced meanwhile: the hash might not be these weights
        raise CheckpointError(f"{path} changed while it was being loaded; try again")
    dtype = torch.float16 if fp16 and dev.type == "cuda" else torch.float32
    # channels_last lets oneDNN and cuDNN pick their fastest convolutions.
    model = model.to(dtype=dtype, memory_format=torch.channels_last)
    reference = TorchRunner(model, dev, dtype)
    # On CUDA every batch shape gets its kernels picked once, so warm them all; on the CPU a few.
    sizes = range(1, max_batch_size + 1) if dev.type == "cuda" else (1, 8, max_batch_size)
    try:
        warm_up(reference, latent_dim=model.latent_dim, batch_sizes=(1,))
        runner, info = select_runner(
            backend,
            reference,
            threads,
            cache_key=sha256,
            cuda_graphs=cuda_graphs,
            max_batch_size=max_batch_size,
        )
        warm_up(runner, latent_dim=model.latent_dim, batch_sizes=tuple(sizes))
    except Exception as exc:  # e.g. a valid config for another input size: not servable here
        raise CheckpointError(f"{path}: the model does not run on 1x32x32 digits: {exc}") from exc
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return LoadedModel(model, metadata, Path(path), sha256, dev, dtype, runner, info, prior)


def warm_up(runner: Runner, latent_dim: int, batch_sizes: tuple[int, ...]) -> None:
    """Runs every operation once per batch size, so the first real request pays no set-up cost."""
    for n in batch_sizes:
        x = torch.zeros(n, 1, 32, 32)
        runner.reconstruct(x)
        runner.encode(x)
        runner.decode(torch.zeros(n, latent_dim))


def load_digit_guide(settings: Settings) -> DigitGuide | None:
    """The guide for chosen digits, or None: `VAE_DIGIT_GUIDE` empty, or the default file absent
    (logged once). A path that was set on purpose and cannot be loaded stops the start-up."""
    path = settings.digit_guide
    if not path:
        return None
    if path == DEFAULT_DIGIT_GUIDE and not Path(path).is_file():
        log.warning("digit guide %s not found: chosen digits are drawn unguided", path)
        return None
    try:
        guide = load_guide(path, settings.digit_candidates)
    except ClassifierError as exc:
        raise CheckpointError(f"VAE_DIGIT_GUIDE: {exc}") from exc
    log.info("chosen digits: up to %d candidates each, accepted by %s", guide.candidates, path)
    return guide


def _file_identity(path: str | Path) -> tuple[int, int, int] | None:
    """Inode, size and mtime: an atomic replace (os.replace) always changes the inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
