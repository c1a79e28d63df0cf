"""Where to run, and tensors out of torch: rules shared by training, evaluation and serving."""

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


def float32_numpy(t: torch.Tensor):
    """`t` as a contiguous float32 NumPy array on the CPU: a view in the usual case (one call, no
    copy), since per `/sample` every torch call here cost microseconds of the event loop."""
    if t.dtype is torch.float32 and t.is_cpu and not t.requires_grad and t.is_contiguous():
        return t.numpy()
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
