"""`vae-train --deterministic`: the same seed gives bit-identical weights.

PyTorch's deterministic algorithms (an error instead of a silently nondeterministic kernel),
cuDNN without autotuning, and cuBLAS with a fixed workspace. There are no DataLoader workers to
seed: batches are sliced on the device by `DeviceBatches`, whose order and binarization noise
already come from seeded generators. The settings are put back when the run ends, so a test
process that trains twice is not left changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for reproducible GEMMs on CUDA >= 10.2


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Within the block, only deterministic kernels run (when `enabled`)."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:3]
        if before[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
