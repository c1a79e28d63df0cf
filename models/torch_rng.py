"""The one generator every seed is drawn from: PyTorch's CPU random numbers, in NumPy.

A seed means the same digits, in every runtime: `/sample` (from a `.pt` or from an export, with
torch or without), `vae-eval` and the backends' check all draw from `TorchCompatibleGenerator`
seeded with it, so a seed gives the same bytes whichever file serves. It reproduces what torch's
CPU generator does (MT19937 seeded with the seed's low 32 bits, then torch's own transforms) for
the two draws the priors make, `torch.rand(..., dtype=float64)` and float32 `torch.randn`: the
seeds served before it drew from `torch.Generator` keep their draws. Uniform draws are torch's
bit for bit, normal ones to float32 rounding (`tests/training/test_torch_rng.py`); the draws
themselves are pinned without torch (`tests/test_seeded_draws.py`).
"""

from __future__ import annotations

import math
import threading

import numpy as np

_MASK_53 = (1 << 53) - 1
_MASK_24 = (1 << 24) - 1
_reusable = threading.local()  # each thread's MT19937 state for `for_one_call`


class TorchCompatibleGenerator:
    """`torch.Generator().manual_seed(seed)` on the CPU, for `rand_float64` and `randn_float32`."""

    def __init__(self, seed: int, bits: np.random.MT19937 | None = None) -> None:
        self._bits = bits if bits is not None else np.random.MT19937(0)
        # torch's seeding: MT19937's own init_genrand on the seed's low 32 bits (NumPy's legacy
        # seeding, as `RandomState(seed)` does it)
        self._bits._legacy_seeding(seed & 0xFFFFFFFF)
        self._cached_normal: float | None = None  # torch's next_double_normal_sample

    @classmethod
    def for_one_call(cls, seed: int) -> TorchCompatibleGenerator:
        """The same draws on this thread's reusable state: a new MT19937 costs 150 us to seed
        (more than the rest of a one-digit `/sample`), a reseeded one 2 us. Only for draws made
        within one synchronous call: the next `for_one_call` on this thread reseeds that state."""
        bits = getattr(_reusable, "bits", None)
        if bits is None:
            bits = _reusable.bits = np.random.MT19937(0)
        return cls(seed, bits)

    def _raw(self, n: int) -> np.ndarray:
        """n raw 32-bit MT19937 outputs, as uint64 (a full-range draw is one raw output)."""
        return self._bits.random_raw(n)

    def _random64(self, n: int) -> np.ndarray:
        pairs = self._raw(2 * n).reshape(n, 2)
        return (pairs[:, 0] << np.uint64(32)) | pairs[:, 1]  # the first draw is the high half

    def rand_float64(self, *shape: int) -> np.ndarray:
        """`torch.rand(*shape, dtype=torch.float64, generator=g)`."""
        n = math.prod(shape)
        bits = self._random64(n) & np.uint64(_MASK_53)
        return (bits.astype(np.float64) * (1.0 / (1 << 53))).reshape(shape)

    def randn_float32(self, *shape: int) -> np.ndarray:
        """`torch.randn(*shape, generator=g)` (float32)."""
        n = math.prod(shape)
        if n >= 16:
            return self._normal_fill(n).reshape(shape)
        return np.array([self._scalar_normal() for _ in range(n)], np.float32).reshape(shape)

    def _uniform_float32(self, n: int) -> np.ndarray:
        bits = self._raw(n) & np.uint64(_MASK_24)
        return (bits.astype(np.float32) * np.float32(1.0 / (1 << 24))).astype(np.float32)

    def _normal_fill(self, n: int) -> np.ndarray:
        """torch's `normal_fill`: n uniforms, Box-Muller on blocks of 16 (j with j + 8), and a
        tail that does not fill a block redraws the last 16 values."""
        data = self._uniform_float32(n)
        whole = n - n % 16
        if whole:
            data[:whole] = _box_muller_16(data[:whole].reshape(-1, 16)).reshape(-1)
        if n % 16:
            data[n - 16 :] = _box_muller_16(self._uniform_float32(16).reshape(1, 16)).reshape(-1)
        return data

    def _scalar_normal(self) -> float:
        """torch's `normal_distribution<double>`: a pair from two uniforms, the second cached."""
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1, u2 = self.rand_float64(2)
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)


def _box_muller_16(blocks: np.ndarray) -> np.ndarray:
    """Box-Muller on torch's float32 uniforms, in float64 and rounded once to float32: torch's
    own float32 arithmetic agrees to a unit or two in the last place, and float64 rounded once
    gives the same bytes on every CPU (float32 log/sin/cos differ between SIMD paths)."""
    u1 = 1.0 - blocks[:, :8].astype(np.float64)  # [0, 1) -> (0, 1] for the log
    radius = np.sqrt(-2.0 * np.log(u1))
    # torch rounds theta to float32 (`2.0f * pi<double> * u2` into a float)
    theta = (2.0 * math.pi * blocks[:, 8:].astype(np.float64)).astype(np.float32).astype(np.float64)
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).astype(
        np.float32
    )
