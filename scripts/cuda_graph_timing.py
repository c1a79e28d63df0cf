"""CUDA graphs against eager PyTorch on this GPU: right (max error within the bound) and faster?

Times `decode` (the /sample path) per call at batch 1, 16 and 64, fp32 and fp16, through the very
runners the service uses (`TorchRunner`, `CudaGraphRunner`), outputs copied back to the CPU as the
service does. Part of `make gpu-check`; its verdict is what `VAE_CUDA_GRAPHS` should default to.

`--device cpu` is the rehearsal's (`make gpu-check REHEARSE=1`): everything runs as on a GPU except
the capture, which needs CUDA, so a second eager runner stands in for the graphs.

    python scripts/cuda_graph_timing.py --json graphs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from app.inference.backends.base import (  # noqa: E402
    FP32_BOUND,
    REDUCED_BOUND,
    check_against,
    check_cases,
)
from app.inference.backends.cuda_graphs import CudaGraphRunner, buckets_up_to  # noqa: E402
from app.inference.backends.eager import TorchRunner  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402

BATCHES = (1, 16, 64)


def microseconds_per_call(decode, z: np.ndarray, calls: int) -> float:
    for _ in range(min(10, calls)):
        decode(z)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        decode(z)  # returns NumPy: each call waits for its result, as a request does
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/mnist-vae.pt"))
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a rehearsal")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_graph_timing: no GPU here")
        return 0
    device = torch.device(args.device)
    rows, right, faster = [], True, True
    fp32_reference = None
    for dtype in (torch.float32, torch.float16):
        model, _ = load_checkpoint(args.checkpoint)
        model = model.to(device, dtype).eval().to(memory_format=torch.channels_last)
        eager = TorchRunner(model, device, dtype)
        fp32_reference = fp32_reference or eager
        if device.type == "cuda":
            graphs = CudaGraphRunner(eager, buckets_up_to(64))
        else:  # no capture without CUDA: the same runner stands in, and the bound is eager's
            graphs = TorchRunner(model, device, dtype)
            graphs.bound = FP32_BOUND if dtype == torch.float32 else REDUCED_BOUND
        cases = check_cases(fp32_reference, model.latent_dim, tuple(args.batches))
        error = check_against(graphs, cases)
        right &= error <= graphs.bound
        for batch in args.batches:
            z = np.random.default_rng(0).standard_normal((batch, model.latent_dim), np.float32)
            eager_us = microseconds_per_call(eager.decode, z, args.calls)
            graphs_us = microseconds_per_call(graphs.decode, z, args.calls)
            if dtype == torch.float32 and batch < 64:
                faster &= graphs_us < eager_us
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": batch,
                    "eager_us": eager_us,
                    "graphs_us": graphs_us,
                    "max_error": error,
                    "bound": graphs.bound,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    verdict = "yes" if right and faster else ("right but not faster" if right else "NOT right")
    if device.type != "cuda":
        verdict = f"a rehearsal on the CPU: no CUDA graphs ({verdict} eager against eager)"
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    result = {"device": name, "rows": rows, "verdict": verdict}
    print(f"CUDA graphs right and faster: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
