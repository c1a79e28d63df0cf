"""What every backend is: the `Runner` protocol, what `/model` reports of it, and its check.

A runner takes and returns float32 NumPy arrays, so the batcher and the routes never know which
one serves, and the torch-free image serves with the same code; every runner built from a torch
checkpoint is held to a bound against eager PyTorch (`check`) before it may serve, and an exported
one was held to it by `vae-export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.torch_rng import TorchCompatibleGenerator

# fp32 runners must match eager within 1e-4, relative above 1 (neg_elbo is ~100 nats, and a sum
# over 784 pixels in another order differs by more than 1e-4 absolute, while pixels and latents are
# held to 1e-4 absolute). Reduced precision gets its own documented bound.
FP32_BOUND = 1e-4
REDUCED_BOUND = 0.05
CHECK_SEED = 20260101


class Runner(Protocol):
    """The three batched operations on float32 arrays, [N, ...] in and out."""

    name: str
    precision: str
    bound: float

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, z: np.ndarray) -> np.ndarray: ...

    def reconstruct(self, x: np.ndarray) -> tuple[np.ndarray, ...]: ...


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

    def _run(self, op: str, x: np.ndarray) -> Sequence[np.ndarray]:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self._run("encode", x)
        return mu, logvar

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run("decode", z)[0]

    def reconstruct(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self._run("reconstruct", x))


Case = tuple[str, np.ndarray, Sequence[np.ndarray]]  # operation, input, expected outputs


def check_cases(reference: Runner, latent_dim: int, batch_sizes: tuple[int, ...] = (1, 16)):
    """Fixed inputs and `reference`'s outputs for them: latents from a seeded generator, and the
    images the reference decodes from them (digit-like, zero border), so the check sees what the
    service sees. `vae-export` records them, so a torch-free server can check without torch."""
    generator = TorchCompatibleGenerator(CHECK_SEED)
    cases: list[Case] = []
    for n in batch_sizes:
        z = generator.randn_float32(n, latent_dim)
        x = reference.decode(z)
        cases += [
            ("encode", x, reference.encode(x)),
            ("decode", z, (reference.decode(z),)),
            ("reconstruct", x, reference.reconstruct(x)),
        ]
    return cases


def check_against(runner: Runner, cases: Sequence[Case]) -> float:
    """Largest error of `runner` over `cases`, in units where 1e-4 means 1e-4: the error of a
    value is |runner - expected| / max(1, |expected|), absolute for pixels and latents, relative
    for neg_elbo; a wrong shape or a NaN is infinite."""
    worst = 0.0
    for op, rows, expected in cases:
        got = getattr(runner, op)(rows)
        got = got if isinstance(got, tuple | list) else (got,)
        if len(got) != len(expected):
            return float("inf")
        for g, want in zip(got, expected, strict=True):
            if g.shape != want.shape:
                return float("inf")
            g, w = np.asarray(g, np.float64), np.asarray(want, np.float64)
            error = float(np.abs((g - w) / np.maximum(np.abs(w), 1.0)).max())
            if error != error:  # NaN
                return float("inf")
            worst = max(worst, error)
    return worst


def check(runner: Runner, reference: Runner, latent_dim: int) -> float:
    """Largest error of `runner` against eager (`reference`) on `check_cases`."""
    return check_against(runner, check_cases(reference, latent_dim))
