"""OpenVINO on the CPU, from the same ONNX graphs as ONNX Runtime."""

from __future__ import annotations

import numpy as np

from app.inference.backends.base import FP32_BOUND, REDUCED_BOUND, GraphRunner


class OpenVinoRunner(GraphRunner):
    """OpenVINO on the CPU: float32, or its own default precision (bf16 where the CPU has it).

    The default precision is faster, with pixel errors up to about 0.02: it is only served under
    its own name, `openvino-bf16`, and its own bound.
    Infer requests are not thread-safe; each operation has one, and only the inference thread (or
    the loading thread, before the model is installed) uses it.
    """

    name = "openvino"
    bound = FP32_BOUND

    def __init__(self, graphs: dict[str, bytes], threads: int, reduced: bool = False) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, object] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,  # taskset and containers decide the cores, not OpenVINO
        }
        if reduced:
            self.name, self.bound = "openvino-bf16", REDUCED_BOUND
        else:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self._requests = {}
        for op, graph in graphs.items():
            compiled = core.compile_model(core.read_model(graph, b""), "CPU", config)
            self._requests[op] = compiled.create_infer_request()
            self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _run(self, op: str, x: np.ndarray) -> list[np.ndarray]:
        request = self._requests[op]
        result = request.infer({0: np.ascontiguousarray(x, np.float32)})  # copies the outputs
        return [result[o] for o in request.model_outputs]
