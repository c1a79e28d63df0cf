"""Every backend that runs ONNX graphs, by name, in one table: how `VAE_BACKEND`'s name becomes
a runner, for a checkpoint's graphs (exported at load, `select`) and an export's
(`artifact.export_reader`) alike. The names `VAE_BACKEND` accepts are `app.config.BACKENDS`: these,
`torch` (eager PyTorch, or CUDA graphs, built by `select`) and `auto` (which `select` and the
export reader each resolve)."""

from __future__ import annotations

from collections.abc import Callable

from app.inference.backends.base import Runner
from app.inference.backends.onnx import OnnxRuntimeRunner
from app.inference.backends.openvino import OpenVinoRunner

GraphRunnerFactory = Callable[[dict[str, bytes], int], Runner]  # (graphs by op, threads)

GRAPH_RUNNERS: dict[str, GraphRunnerFactory] = {
    "onnxruntime": OnnxRuntimeRunner,
    "openvino": lambda graphs, threads: OpenVinoRunner(graphs, threads),
    "openvino-bf16": lambda graphs, threads: OpenVinoRunner(graphs, threads, reduced=True),
}


class BackendUnavailable(Exception):
    """A name that runs no graphs, or a backend whose package is not installed here (OpenVINO is
    the `[openvino]` extra; the CPU image has ONNX Runtime alone)."""


def graph_runner(name: str, graphs: dict[str, bytes], threads: int) -> Runner:
    """The runner `name` names, on `graphs`; whatever else fails (a graph the runtime refuses)
    raises the runtime's own error."""
    make = GRAPH_RUNNERS.get(name)
    if make is None:
        raise BackendUnavailable(f"{name!r} runs no graphs; pick from {', '.join(GRAPH_RUNNERS)}")
    try:
        return make(graphs, threads)
    except ImportError as exc:
        raise BackendUnavailable(f"{name} is not installed here: {exc}") from exc
