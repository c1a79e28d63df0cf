"""The decoder graph of a `vae-export` folder as one ONNX Runtime session, set up as the service's.

The options are copied from `app/inference/backends/onnx.py` (one intra-op thread that sleeps
rather than spins, sequential, every graph optimisation) so that every server in
`bench/oip_bench.py` runs the same graph the same way and answers bit for bit alike. Only
onnxruntime and numpy here: the peers' own venvs have neither torch nor the service's `app`.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

MODEL_NAME = "mnist-vae-decoder"  # the name the service's /v2 routes give the decoder
INPUT = "z"  # the protocol's tensor names, as the service's OIP decoder takes and gives them
OUTPUT = "image"


def decoder_session(path: str) -> ort.InferenceSession:
    """A CPU session on `path` (the export's `decode.onnx`) with the service's options."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def decode(session: ort.InferenceSession, z: np.ndarray) -> np.ndarray:
    """z [N, latent] -> images [N, 1, 32, 32], float32 (the graph's input is named "input")."""
    return session.run(None, {"input": np.ascontiguousarray(z, np.float32)})[0]
