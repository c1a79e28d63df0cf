"""ONNX Runtime's CPU provider running the three operations' ONNX graphs (no torch needed)."""

from __future__ import annotations

import numpy as np

from app.inference.backends.base import FP32_BOUND, GraphRunner


class OnnxRuntimeRunner(GraphRunner):
    """ONNX Runtime's CPU provider, `threads` intra-op threads that sleep rather than spin.

    Spinning workers would compete with the event loop for the cores it was promised (the same
    reason `inference_threads` keeps one core free); with one thread there is no pool at all.
    """

    name = "onnxruntime"
    precision = "f32"
    bound = FP32_BOUND

    def __init__(self, graphs: dict[str, bytes], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._sessions = {
            op: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            for op, graph in graphs.items()
        }

    def _run(self, op: str, x: np.ndarray) -> list[np.ndarray]:
        return self._sessions[op].run(None, {"input": np.ascontiguousarray(x, np.float32)})
