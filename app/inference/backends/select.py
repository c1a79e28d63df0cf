"""Which backend serves: the one asked for if it builds and passes its check, else eager torch.

`VAE_BACKEND=auto` serves the CPU with ONNX Runtime (the framework's own overhead is most of a
forward pass of this small network) and CUDA with PyTorch.
"""

from __future__ import annotations

import logging

import torch

from app.inference.backends.base import BackendInfo, Runner, check
from app.inference.backends.eager import TorchRunner
from app.inference.backends.onnx_export import export_onnx
from app.inference.backends.table import graph_runner
from models.vae import ConvVAE

log = logging.getLogger("app.backends")


def resolve_backend(requested: str, device: torch.device) -> str:
    """`auto`: ONNX Runtime on the CPU when it is installed, PyTorch (CUDA graphs) on CUDA."""
    if requested != "auto":
        return requested
    if device.type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def build_runner(name: str, model: ConvVAE, threads: int, cache_key: str | None = None) -> Runner:
    """A non-torch runner for `model` (float32, CPU), from the one table of them; raises if it
    cannot be built here."""
    return graph_runner(name, export_onnx(model, cache_key), threads)


def select_runner(
    requested: str,
    reference: TorchRunner,
    threads: int,
    *,
    cache_key: str | None = None,
    cuda_graphs: bool = True,
    max_batch_size: int = 64,
) -> tuple[Runner, BackendInfo]:
    """The runner to serve with: the requested backend if it builds and passes `check`, else
    eager PyTorch, with one warning that says why."""
    name = resolve_backend(requested, reference.device)
    if name == "torch" and not (cuda_graphs and reference.device.type == "cuda"):
        return reference, BackendInfo(requested, "torch", reference.precision)
    if name == "torch":

        def build() -> Runner:
            from app.inference.backends.cuda_graphs import CudaGraphRunner, buckets_up_to

            return CudaGraphRunner(reference, buckets_up_to(max_batch_size))
    elif reference.device.type != "cpu":
        reason = f"{name} serves the CPU only, and the model is on {reference.device}"
        return _fall_back(requested, reference, reason)
    else:

        def build() -> Runner:
            return build_runner(name, reference.model, threads, cache_key)

    try:
        runner = build()
        error = check(runner, reference, reference.model.latent_dim)
    except Exception as exc:  # a missing package, an export or compile failure: serve with torch
        return _fall_back(requested, reference, f"{name} could not be built: {exc}")
    if not error <= runner.bound:
        reason = f"{runner.name} differs from eager by {error:.3g}, over its bound {runner.bound:g}"
        return _fall_back(requested, reference, reason)
    info = BackendInfo(requested, runner.name, runner.precision, error, runner.bound)
    return runner, info


def _fall_back(requested: str, reference: TorchRunner, reason: str) -> tuple[Runner, BackendInfo]:
    log.warning("backend %s not used, serving with torch: %s", requested, reason)
    return reference, BackendInfo(requested, "torch", reference.precision, fallback_reason=reason)
