"""What serves: `LoadedModel` (one model, loaded and warmed) and what every loader shares.

`LoadedModel` is immutable, so a reload builds the next one on the side and the engine swaps one
reference; requests in flight finish on the model they started with.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.backends.base import BackendInfo, Runner
from models.prior import Prior
from models.typicality import Typicality


@dataclass(frozen=True)
class ArtifactInfo:
    """What `/model` reports of the file that serves: its kind, path, hash and runtime."""

    kind: str  # "torch-checkpoint" or "onnx-export"
    path: str
    sha256: str
    runtime: str  # e.g. "torch 2.9.1" or "onnxruntime 1.23.2"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One model, loaded and warmed; immutable, so it can be shared across threads."""

    metadata: dict[str, Any]
    checkpoint: Path
    sha256: str  # of the torch checkpoint the weights come from (an export records it)
    config: dict[str, Any]
    latent_dim: int
    device: str
    dtype: str
    runner: Runner  # where the forward passes run; checked against eager at load or export
    backend: BackendInfo
    prior: Prior  # the checkpoint's own; N(0, I) when it carries none
    artifact: ArtifactInfo
    model: Any = None  # the torch module behind a checkpoint's runner; None for an export
    # "Is this a digit?" (`models.typicality`): None for a checkpoint or export calibrated before
    # issue 30, which serves without the score
    typicality: Typicality | None = None
    # How answers name the checkpoint: as the caller of a reload named it, never the server's
    # absolute path (None: `checkpoint` as configured).
    shown_as: str | None = None
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @cached_property
    def unscored(self) -> LoadedModel:
        """This model without the typicality score, for callers that drop it (`Engine.encode`):
        one object per model, so the batcher merges its rows with each other, never with rows
        that are scored."""
        return self if self.typicality is None else dataclasses.replace(self, typicality=None)


def torch_available() -> bool:
    """Whether torch can be imported here (the CPU image has none)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def warm_up(runner: Runner, latent_dim: int, batch_sizes: tuple[int, ...]) -> None:
    """Runs every operation once per batch size, so the first real request pays no set-up cost."""
    for n in batch_sizes:
        x = np.zeros((n, 1, 32, 32), np.float32)
        runner.reconstruct(x)
        runner.encode(x)
        runner.decode(np.zeros((n, latent_dim), np.float32))


def file_identity(path: str | Path) -> tuple[int, int, int] | None:
    """Inode, size and mtime: an atomic replace (os.replace) always changes the inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
