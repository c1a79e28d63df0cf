"""Every inference backend matches eager PyTorch within its bound, and one that does not (or that
cannot be built) is replaced by eager PyTorch with one log line."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import torch

from app.config import BACKENDS
from app.images.examples import ExampleStore
from app.inference.backends import onnx, table
from app.inference.backends.base import FP32_BOUND, REDUCED_BOUND, check
from app.inference.backends.cuda_graphs import BucketedRunner, buckets_up_to
from app.inference.backends.eager import TorchRunner
from app.inference.backends.select import select_runner
from models.checkpoint import load_checkpoint

BOUNDS = {"onnxruntime": FP32_BOUND, "openvino": FP32_BOUND, "openvino-bf16": REDUCED_BOUND}


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> TorchRunner:
    model, _ = load_checkpoint(tiny_checkpoint)
    return TorchRunner(
        model.to(memory_format=torch.channels_last), torch.device("cpu"), torch.float32
    )


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Real MNIST test digits (the bundled examples), unlike the check's own inputs."""
    return np.stack([e.tensor for e in list(ExampleStore())[:12]])


def _worst(got, want) -> float:
    pairs = zip(got, want, strict=True) if isinstance(got, tuple) else [(got, want)]
    return max(float(np.abs((g - w) / np.maximum(np.abs(w), 1)).max()) for g, w in pairs)


@pytest.mark.parametrize("name", list(BOUNDS))
def test_every_backend_matches_eager_within_its_bound(name, reference, digits, caplog):
    with caplog.at_level(logging.WARNING, logger="app.backends"):
        runner, info = select_runner(name, reference, threads=1)
    assert info.name == name and info.fallback_reason is None, caplog.text
    assert info.bound == BOUNDS[name] and info.max_error <= info.bound
    z = torch.randn(
        5, reference.model.latent_dim, generator=torch.Generator().manual_seed(3)
    ).numpy()
    assert _worst(runner.decode(z), reference.decode(z)) <= BOUNDS[name]
    assert _worst(runner.encode(digits), reference.encode(digits)) <= BOUNDS[name]
    assert _worst(runner.reconstruct(digits), reference.reconstruct(digits)) <= BOUNDS[name]
    if name != "openvino-bf16":  # fp32 is much closer than its bound
        assert _worst(runner.decode(z), reference.decode(z)) < 1e-5


def test_same_input_same_backend_same_numbers(reference):
    runner, _ = select_runner("onnxruntime", reference, threads=1)
    z = torch.randn(
        4, reference.model.latent_dim, generator=torch.Generator().manual_seed(9)
    ).numpy()
    assert np.array_equal(runner.decode(z), runner.decode(z.copy()))


def test_auto_is_onnxruntime_on_the_cpu(reference):
    _, info = select_runner("auto", reference, threads=1)
    assert (info.requested, info.name, info.precision) == ("auto", "onnxruntime", "f32")


def test_a_backend_that_returns_wrong_numbers_falls_back_to_torch(reference, monkeypatch, caplog):
    real_decode = onnx.OnnxRuntimeRunner.decode
    monkeypatch.setattr(
        onnx.OnnxRuntimeRunner, "decode", lambda self, z: real_decode(self, z) + 1e-3
    )
    with caplog.at_level(logging.WARNING, logger="app.backends"):
        runner, info = select_runner("onnxruntime", reference, threads=1)
    assert runner is reference
    assert info.name == "torch" and info.requested == "onnxruntime"
    assert "differs from eager" in info.fallback_reason
    [line] = [r for r in caplog.records if r.name == "app.backends"]
    assert "serving with torch" in line.getMessage()


def test_a_backend_that_cannot_be_built_falls_back_to_torch(reference, monkeypatch):
    def broken(graphs, threads):
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setitem(table.GRAPH_RUNNERS, "onnxruntime", broken)
    runner, info = select_runner("onnxruntime", reference, threads=1)
    assert runner is reference and "could not be built" in info.fallback_reason
    assert "onnxruntime is not installed here" in info.fallback_reason


def test_every_backend_name_is_in_the_one_table_or_resolved_by_select() -> None:
    """`VAE_BACKEND`'s names (app.config) are the graph runners' table, `torch` and `auto`."""
    assert set(BACKENDS) == {"auto", "torch", *table.GRAPH_RUNNERS}
    with pytest.raises(table.BackendUnavailable, match="runs no graphs"):
        table.graph_runner("torch", {}, threads=1)


def test_bucketed_runs_pad_to_the_bucket_and_return_only_the_callers_rows(reference):
    """The CUDA-graph runner's padding, exercised on the CPU with eager forward passes."""
    seen: list[int] = []

    class EagerBuckets(BucketedRunner):
        def _run_bucket(self, op, padded):
            seen.append(len(padded))
            out = getattr(reference, op)(padded.numpy())
            return tuple(torch.from_numpy(o) for o in (out if isinstance(out, tuple) else (out,)))

    assert buckets_up_to(64) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(48) == (1, 2, 4, 8, 16, 32, 48)
    runner = EagerBuckets(reference, buckets_up_to(8))
    z = torch.randn(
        5, reference.model.latent_dim, generator=torch.Generator().manual_seed(1)
    ).numpy()
    images = runner.decode(z)
    assert seen == [8] and images.shape == (5, 1, 32, 32)
    assert _worst(images, reference.decode(z)) < 1e-5
    assert check(runner, reference, reference.model.latent_dim) < 1e-5
    big = np.zeros((9, reference.model.latent_dim), np.float32)
    assert runner.decode(big).shape[0] == 9  # over the largest bucket: eager, not an error


@pytest.mark.parametrize("name", ["onnxruntime", "openvino-bf16"])
def test_model_says_which_backend_serves_and_a_seed_gives_the_same_bytes(
    name, make_settings, serving
):
    async def run():
        async with serving(make_settings(backend=name)) as client:
            info = (await client.get("/model")).json()["backend"]
            first = await client.post("/sample", json={"n": 4, "seed": 11})
            again = await client.post("/sample", json={"n": 4, "seed": 11})
            return info, first, again

    info, first, again = asyncio.run(run())
    assert info["requested"] == name and info["name"] == name
    assert info["max_error"] <= info["bound"] and info["fallback_reason"] is None
    assert first.status_code == 200 and first.content == again.content


def test_model_reports_a_fallback(make_settings, serving, monkeypatch):
    monkeypatch.setattr(
        onnx.OnnxRuntimeRunner, "encode", lambda self, x: (np.zeros((len(x), 8), np.float32),) * 2
    )

    async def run():
        async with serving(make_settings(backend="onnxruntime")) as client:
            return (await client.get("/model")).json()["backend"]

    info = asyncio.run(run())
    assert info["name"] == "torch" and info["requested"] == "onnxruntime"
    assert "differs from eager" in info["fallback_reason"]
