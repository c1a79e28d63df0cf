"""`models.torch_rng` draws what torch's CPU generator draws for the same seed: the promise that
a seed means the same digits, kept by the torch-free image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.torch_rng import TorchCompatibleGenerator

SEEDS = [0, 11, 2**32 + 7, 2**62 + 12345, 2**63 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_doubles_are_torchs_bit_for_bit(seed: int) -> None:
    ours, theirs = TorchCompatibleGenerator(seed), torch.Generator().manual_seed(seed)
    for shape in [(7,), (3, 1), (100,)]:
        expected = torch.rand(*shape, generator=theirs, dtype=torch.float64).numpy()
        assert np.array_equal(ours.rand_float64(*shape), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_normals_follow_torch_through_a_mixed_sequence_of_draws(seed: int) -> None:
    """Small draws (torch's scalar path, which caches every second normal) and large ones (its
    vectorised blocks of 16, with a redrawn tail) interleaved with uniforms, as the priors do."""
    ours, theirs = TorchCompatibleGenerator(seed), torch.Generator().manual_seed(seed)
    for shape in [(3, 5), (1, 2), (6, 16), (2, 3), (37,), (5, 16, 1), (1,), (9, 16, 1)]:
        expected = torch.randn(*shape, generator=theirs).numpy()
        got = ours.randn_float32(*shape)
        assert got.shape == expected.shape and got.dtype == np.float32
        # exact on the scalar path; torch vectorises log/sin/cos for 16 or more values
        assert np.abs(got - expected).max() <= (0 if expected.size < 16 else 5e-6)
        u = torch.rand(2, generator=theirs, dtype=torch.float64).numpy()
        assert np.array_equal(ours.rand_float64(2), u)


def test_different_seeds_differ() -> None:
    a, b = TorchCompatibleGenerator(1), TorchCompatibleGenerator(2)
    assert not np.array_equal(a.randn_float32(4, 16), b.randn_float32(4, 16))


def test_a_generator_for_one_call_draws_what_a_new_one_draws():
    """`/sample` reseeds one state per thread (3 us) instead of seeding a new MT19937 (150 us,
    a quarter of a one-digit request's CPU): the draws must not tell the two apart, however
    the calls interleave."""
    for seed in (0, 7, 2**40 + 3, 2**63 - 1):
        fresh = TorchCompatibleGenerator(seed)
        expected = (fresh.randn_float32(3, 32), fresh.rand_float64(5), fresh.randn_float32(1, 5))
        TorchCompatibleGenerator.for_one_call(seed + 1).randn_float32(2, 32)  # another request
        reused = TorchCompatibleGenerator.for_one_call(seed)
        drawn = (reused.randn_float32(3, 32), reused.rand_float64(5), reused.randn_float32(1, 5))
        for want, got in zip(expected, drawn, strict=True):
            np.testing.assert_array_equal(want, got)
