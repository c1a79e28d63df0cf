"""Why CUDA cannot start, in one line: what was found and what this torch needs. Importable
without torch (the CPU image's `vae-serve` catches `CudaUnavailable` too)."""

from __future__ import annotations

import re

# The oldest NVIDIA driver that runs each CUDA major version (NVIDIA's compatibility table: a
# toolkit's minor versions run on the first driver of its major version).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


class CudaUnavailable(RuntimeError):
    """CUDA was asked for and cannot start here; the message says what was found and needed."""


def cuda_unavailable(requested: str, error: str, torch_version: str, built_cuda: str | None) -> str:
    """The line for a `requested` CUDA device that cannot start: `error` is what torch said when
    asked to initialise CUDA ('' when it said nothing), `built_cuda` the CUDA its build targets
    (torch.version.cuda; None for a CPU-only build)."""
    if built_cuda is None:
        return (
            f"device {requested!r} was requested but this torch ({torch_version}) is built "
            "without CUDA; install a CUDA build of torch"
        )
    major = int(built_cuda.split(".")[0])
    needed = f"this torch ({torch_version}) needs an NVIDIA driver for CUDA {built_cuda}"
    if major in MIN_DRIVER:
        needed += f" (driver >= {MIN_DRIVER[major]})"
    return f"device {requested!r} was requested but {_found(error)}; {needed}"


def _found(error: str) -> str:
    if version := re.search(r"found version (\d+)", error):
        api = int(version.group(1))  # the driver's CUDA version as 1000 * major + 10 * minor
        runs = f"{api // 1000}.{api % 1000 // 10}"
        return f"the NVIDIA driver here is too old: it runs CUDA up to {runs}"
    if re.search(r"no NVIDIA driver", error, re.IGNORECASE):
        return "no NVIDIA driver was found"
    if not error.strip():
        return "no CUDA GPU is visible"
    return "CUDA did not start: " + error.strip().split(". ")[0].rstrip(".")
