"""How inference shares the machine's cores with the event loop."""

from __future__ import annotations

import os


def inference_threads(requested: int = 0) -> int:
    """0 means: leave one core to the event loop (HTTP, JSON, PNG) and use up to 4 for inference.

    On a small machine torch's default (every core) makes its threads spin against the event loop
    and against each other.
    """
    if requested > 0:
        return requested
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


def limit_numpy_threads(threads: int) -> None:
    """NumPy's BLAS (OpenBLAS) threads, process-wide, to the inference thread's share. By default
    it starts one per core for products as small as the typicality score's (8 x 32 by 32 x 6400),
    and on a busy machine they wait on the event loop and ONNX Runtime: a batch of 8 took 0.4 ms
    with one thread and up to 17 ms with its own pool on the 2-core development machine."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")


def lone_rows_now(setting: str, device: str) -> bool:
    """Whether a lone row may run on the event loop (`MicroBatcher(lone_rows_now=...)`): `auto`
    when the process may use one core and the model is on the CPU, where the inference thread
    cannot run beside the loop anyway (on CUDA the loop would wait for the GPU)."""
    if setting != "auto":
        return setting == "on"
    on_cpu = device == "cpu" or (device == "auto" and not _cuda_available())
    return on_cpu and len(os.sched_getaffinity(0)) == 1


def _cuda_available() -> bool:
    """Whether torch sees a GPU; without torch (the CPU image) there is none to use."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
