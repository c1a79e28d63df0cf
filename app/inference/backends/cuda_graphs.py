"""CUDA graphs per batch-size bucket: one graph launch per forward pass instead of ~60 kernels.

On a GPU this small network is bound by kernel launches, not by arithmetic. A batch is padded with
zero rows up to the smallest bucket that holds it (1, 2, 4, ..., `max_batch_size`), that bucket's
captured graph is replayed, and the first N rows are copied back; rows are independent in eval
mode, so the padding never changes an answer. Built at load for every operation and bucket, then
checked against eager like any other backend (`app.inference.backends.base.check`); a capture
failure or a failed check serves eager PyTorch instead.

Off by default (`VAE_CUDA_GRAPHS`) until `make gpu-check` has shown it right and faster on a GPU.
It follows the PyTorch CUDA graphs recipe (warm-up on a side stream, one shared memory pool,
`thread_local` capture so a reload can capture while the old model serves); its padding logic is
tested on the CPU through `BucketedRunner`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from app.inference.backends.base import FP32_BOUND, REDUCED_BOUND, GraphRunner
from app.inference.backends.eager import TorchRunner, reconstruct_graph

OPS = ("encode", "decode", "reconstruct")


def buckets_up_to(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below `max_batch_size`, and `max_batch_size` itself."""
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return (*sizes, max_batch_size)


class BucketedRunner(GraphRunner):
    """Pads each batch to its bucket, runs `_run_bucket`, and returns the caller's rows (on the CPU,
    float32). Batches larger than the largest bucket (the batcher never sends one) run eagerly."""

    name = "bucketed"
    precision = "f32"
    bound = FP32_BOUND

    def __init__(self, reference: TorchRunner, buckets: tuple[int, ...]) -> None:
        self.reference = reference
        self.buckets = tuple(sorted(buckets))

    def bucket_for(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def _run_bucket(self, op: str, padded: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _run(self, op: str, x: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(x)
        bucket = self.bucket_for(n)
        if bucket is None:
            out = getattr(self.reference, op)(x)
            return out if isinstance(out, tuple) else (out,)
        padded = x
        if bucket > n:
            padded = np.concatenate([x, np.zeros((bucket - n, *x.shape[1:]), x.dtype)])
        outputs = self._run_bucket(op, torch.from_numpy(np.ascontiguousarray(padded)))
        return tuple(t[:n].float().cpu().numpy() for t in outputs)


def _forward(reference: TorchRunner, op: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    model = reference.model
    if op == "encode":
        return lambda x: model.encode(x)
    if op == "decode":
        return lambda z: (model.decode(z),)
    return lambda x: reconstruct_graph(model, x)


class CudaGraphRunner(BucketedRunner):
    """One captured graph per (operation, bucket), each with static input and output tensors.

    Only the inference thread replays, one graph at a time, and the outputs are copied to the CPU
    before the next replay can overwrite them.
    """

    name = "torch+cuda-graphs"

    def __init__(self, reference: TorchRunner, buckets: tuple[int, ...]) -> None:
        super().__init__(reference, buckets)
        if reference.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.precision = reference.precision
        self.bound = FP32_BOUND if reference.dtype == torch.float32 else REDUCED_BOUND
        self._graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple]] = {}
        device, dtype = reference.device, reference.dtype
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        cfg = reference.model.config
        for op in OPS:
            forward = _forward(reference, op)
            for bucket in self.buckets:
                shape = (
                    (bucket, reference.model.latent_dim)
                    if op == "decode"
                    else (bucket, cfg.in_channels, cfg.image_size, cfg.image_size)
                )
                static_in = torch.zeros(shape, device=device, dtype=dtype)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(3):  # cuDNN picks its kernels and the allocator settles
                        forward(static_in)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with (
                    torch.inference_mode(),
                    torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"),
                ):
                    static_out = forward(static_in)
                self._graphs[(op, bucket)] = (graph, static_in, static_out)
        torch.cuda.synchronize(device)

    def _run_bucket(self, op: str, padded: torch.Tensor) -> tuple[torch.Tensor, ...]:
        graph, static_in, static_out = self._graphs[(op, len(padded))]
        static_in.copy_(padded, non_blocking=True)
        graph.replay()
        return static_out
