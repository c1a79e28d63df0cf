"""The CUDA path, on a GPU only (`make gpu-check` runs these): CUDA-graph capture answers as eager
PyTorch does, half precision stays within its bound, and the service picks the graphs when asked.

Skipped without CUDA. Speed is measured by `scripts/gpu_check.py`, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.inference.backends.base import FP32_BOUND, REDUCED_BOUND, check_against, check_cases
from app.inference.backends.cuda_graphs import CudaGraphRunner, buckets_up_to
from app.inference.backends.eager import TorchRunner
from app.inference.backends.select import select_runner
from models.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist-vae.pt"
BATCHES = (1, 3, 16, 33, 64)  # exact buckets and padded ones


def check(runner, reference: TorchRunner, batches: tuple[int, ...]) -> float:
    """`runner`'s largest error against eager `reference` on the service's fixed inputs."""
    return check_against(runner, check_cases(reference, reference.model.latent_dim, batches))


def _reference(dtype: torch.dtype = torch.float32) -> TorchRunner:
    model, _ = load_checkpoint(SHIPPED)
    model = model.to("cuda", dtype).eval().to(memory_format=torch.channels_last)
    return TorchRunner(model, torch.device("cuda"), dtype)


def test_every_bucket_is_captured():
    runner = CudaGraphRunner(_reference(), buckets_up_to(64))
    assert runner.buckets == (1, 2, 4, 8, 16, 32, 64)
    assert len(runner._graphs) == 3 * len(runner.buckets)


def test_graph_replay_matches_eager_within_the_fp32_bound():
    reference = _reference()
    runner = CudaGraphRunner(reference, buckets_up_to(64))
    assert check(runner, reference, BATCHES) <= FP32_BOUND


def test_a_replay_answers_for_its_own_inputs_not_the_last_capture():
    """Two different batches through the same bucket: each gets its own answer."""
    reference = _reference()
    runner = CudaGraphRunner(reference, buckets_up_to(64))
    rng = np.random.default_rng(0)
    latent = reference.model.latent_dim
    first, second = (rng.standard_normal((5, latent)).astype(np.float32) for _ in "ab")
    a, b = runner.decode(first), runner.decode(second)
    assert not np.array_equal(a, b)
    assert np.abs(a - reference.decode(first)).max() <= FP32_BOUND
    assert np.abs(b - reference.decode(second)).max() <= FP32_BOUND


def test_half_precision_stays_within_the_reduced_bound_of_fp32_eager():
    fp32 = _reference()
    assert check(_reference(torch.float16), fp32, BATCHES) <= REDUCED_BOUND
    graphs16 = CudaGraphRunner(_reference(torch.float16), buckets_up_to(64))
    assert graphs16.bound == REDUCED_BOUND
    assert check(graphs16, fp32, BATCHES) <= REDUCED_BOUND


def test_the_service_serves_the_graphs_when_they_are_switched_on():
    runner, info = select_runner("auto", _reference(), threads=1, cuda_graphs=True)
    assert isinstance(runner, CudaGraphRunner), info
    assert info.fallback_reason is None and info.max_error <= FP32_BOUND
    eager, info = select_runner("auto", _reference(), threads=1, cuda_graphs=False)
    assert isinstance(eager, TorchRunner)
