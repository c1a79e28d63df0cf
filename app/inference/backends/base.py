"""What every backend is: the `Runner` protocol, what `/model` reports of it, and its check.

A runner takes and returns float32 CPU tensors, so the batcher and the routes never know which one
serves; every runner is held to a bound against eager PyTorch (`check`) before it may serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from app.inference.backends.eager import TorchRunner

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16")
# fp32 runners must match eager within 1e-4, relative above 1 (neg_elbo is ~100 nats, and a sum
# over 784 pixels in another order differs by more than 1e-4 absolute, while pixels and latents are
# held to 1e-4 absolute). Reduced precision gets its own documented bound.
FP32_BOUND = 1e-4
REDUCED_BOUND = 0.05
CHECK_SEED = 20260101


class Runner(Protocol):
    """The three batched operations on float32 CPU tensors, [N, ...] in and out."""

    name: str
    precision: str
    bound: float

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


@dataclass(frozen=True)
class BackendInfo:
    """What `/model` reports: what was asked for, what serves, and how close it is to eager."""

    requested: str
    name: str
    precision: str
    max_error: float | None = None  # against eager, in the units of `bound`; None: eager itself
    bound: float | None = None
    fallback_reason: str | None = None


class GraphRunner:
    """The three operations of a runner that runs one graph per operation by name (`_run`)."""

    def _run(self, op: str, x: torch.Tensor) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._run("encode", x)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run("decode", z)[0]

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._run("reconstruct", x))


def check(runner: Runner, reference: TorchRunner, batch_sizes: tuple[int, ...] = (1, 16)) -> float:
    """Largest error of `runner` against eager over fixed inputs, in units where 1e-4 means 1e-4.

    The inputs are fixed: latents from a seeded generator, and the images eager decodes from them
    (digit-like, zero border), so the check sees what the service sees. The error of a value is
    |runner - eager| / max(1, |eager|): absolute for pixels and latents, relative for neg_elbo.
    """
    generator = torch.Generator().manual_seed(CHECK_SEED)
    worst = 0.0
    for n in batch_sizes:
        z = torch.randn(n, reference.model.latent_dim, generator=generator)
        x = reference.decode(z)
        pairs = [
            *zip(runner.encode(x), reference.encode(x), strict=True),
            (runner.decode(z), reference.decode(z)),
            *zip(runner.reconstruct(x), reference.reconstruct(x), strict=True),
        ]
        for got, want in pairs:
            if got.shape != want.shape:
                return float("inf")
            error = ((got.float() - want) / want.abs().clamp(min=1.0)).abs().max().item()
            if error != error:  # NaN
                return float("inf")
            worst = max(worst, error)
    return worst
