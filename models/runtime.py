"""Where to run: one rule shared by training, evaluation and serving."""

from __future__ import annotations

import torch


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is visible, else the CPU; asking for CUDA without one fails."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available")
    return device
