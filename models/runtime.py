"""Where to run, and tensors out of torch: rules shared by training, evaluation and serving."""

from __future__ import annotations

import torch

from models.device_errors import CudaUnavailable, cuda_unavailable


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is visible, else the CPU; asking for CUDA without one fails
    with `CudaUnavailable`, whose one line says what was found and what this torch needs."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CudaUnavailable(
            cuda_unavailable(requested, _cuda_init_error(), torch.__version__, torch.version.cuda)
        )
    return device


def _cuda_init_error() -> str:
    """What torch says when made to initialise CUDA (the driver's version when it is too old)."""
    try:
        torch.cuda.init()
    except Exception as exc:  # RuntimeError, or AssertionError for a build without CUDA
        return str(exc)
    return ""


def float32_numpy(t: torch.Tensor):
    """`t` as a contiguous float32 NumPy array on the CPU: a view in the usual case (one call, no
    copy), since per `/sample` every torch call here cost microseconds of the event loop."""
    if t.dtype is torch.float32 and t.is_cpu and not t.requires_grad and t.is_contiguous():
        return t.numpy()
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
