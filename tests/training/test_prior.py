"""The learned prior: densities against hand computations, seeded sampling, EM, per-digit draws."""

import math

import numpy as np
import pytest
import torch

from models.prior import (
    GaussianMixture,
    MixturePrior,
    PriorError,
    StandardNormalPrior,
)
from training.gmm import fit_gaussian_mixture, merge_labelled


def _two_component_2d() -> GaussianMixture:
    cov_a = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    cov_b = torch.tensor([[0.5, -0.2], [-0.2, 0.3]])
    return GaussianMixture(
        weights=torch.tensor([0.3, 0.7]),
        means=torch.tensor([[1.0, -1.0], [-2.0, 0.5]]),
        scale_tril=torch.linalg.cholesky(torch.stack([cov_a, cov_b])),
        labels=torch.tensor([3, 7]),
    )


def _by_hand(z, weights, means, covs) -> float:
    """sum_k w_k exp(-(z-m)^T S^-1 (z-m) / 2) / (2 pi sqrt(det S)), 2x2 inverse written out."""
    total = 0.0
    for w, m, s in zip(weights, means, covs, strict=True):
        (a, b), (c, d) = s
        det = a * d - b * c
        inv = np.array([[d, -b], [-c, a]]) / det
        diff = np.asarray(z) - np.asarray(m)
        total += w * math.exp(-0.5 * diff @ inv @ diff) / (2 * math.pi * math.sqrt(det))
    return math.log(total)


def test_mixture_log_density_matches_a_hand_computation():
    mix = _two_component_2d()
    covs = (mix.scale_tril @ mix.scale_tril.transpose(1, 2)).double().numpy()
    points = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5], [3.0, 2.0], [-1.0, -3.0]])
    got = mix.log_prob(points)
    for z, value in zip(points.double().numpy(), got.tolist(), strict=True):
        expected = _by_hand(z, [0.3, 0.7], mix.means.double().numpy(), covs)
        assert value == pytest.approx(expected, abs=1e-5)


def test_log_density_keeps_leading_shape_and_standard_normal_is_the_closed_form():
    mix = _two_component_2d()
    z = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    assert mix.log_prob(z).shape == (4, 3)
    assert torch.allclose(mix.log_prob(z)[1, 2], mix.log_prob(z[1, 2]))
    std = StandardNormalPrior(2)
    expected = -math.log(2 * math.pi) - 0.5 * z.pow(2).sum(-1)
    assert torch.allclose(std.log_prob(z), expected)


def test_one_component_identity_mixture_is_the_standard_normal():
    mix = GaussianMixture(torch.ones(1), torch.zeros(1, 5), torch.eye(5).unsqueeze(0))
    z = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mix.log_prob(z), StandardNormalPrior(5).log_prob(z), atol=1e-5)


def test_sampling_is_seeded_and_matches_the_moments():
    mix = _two_component_2d()
    draw = lambda seed: mix.sample(20_000, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    z = draw(5).double()
    mean = (mix.weights.unsqueeze(1) * mix.means).sum(0).double()
    assert torch.allclose(z.mean(0), mean, atol=0.05)
    hot = mix.sample(20_000, torch.Generator().manual_seed(5), temperature=2.0).double()
    cold = mix.sample(20_000, torch.Generator().manual_seed(5), temperature=0.5).double()
    assert hot.var(0).sum() > z.var(0).sum() > cold.var(0).sum()


def test_standard_normal_draw_is_the_one_the_service_always_made():
    gen = torch.Generator().manual_seed(42)
    expected = torch.randn(3, 8, generator=torch.Generator().manual_seed(42)) * 0.7
    assert torch.equal(StandardNormalPrior(8).sample(3, gen, 0.7), expected)


def test_digit_draws_come_from_that_digits_components_and_are_seeded():
    prior = MixturePrior(_two_component_2d(), classes=_two_component_2d(), accept_threshold=0.9)
    digits = [7, 3, 7, 7, 3]
    z = prior.sample_digits(digits, torch.Generator().manual_seed(0))
    again = prior.sample_digits(digits, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    post = prior.classes.class_log_posterior(z).exp()
    assert post.shape == (5, 10)
    assert torch.allclose(post.sum(1), torch.ones(5), atol=1e-5)
    assert all(post[i, d] >= 0.9 for i, d in enumerate(digits))  # the acceptance step held
    with pytest.raises(PriorError, match=r"digit\(s\) \[4\]"):
        prior.sample_digits([4], torch.Generator().manual_seed(0))


def test_stored_form_round_trips_and_bad_tensors_are_refused():
    prior = MixturePrior(_two_component_2d(), classes=_two_component_2d(), accept_threshold=0.5)
    back = MixturePrior.from_dict(prior.to_dict())
    z = torch.randn(6, 2)
    assert torch.equal(back.log_prob(z), prior.log_prob(z))
    assert back.digits() == [3, 7] and back.accept_threshold == 0.5
    bad = prior.to_dict()
    bad["mixture"]["weights"] = torch.tensor([0.5, 0.9])
    with pytest.raises(PriorError, match="sum to 1"):
        MixturePrior.from_dict(bad)
    bad = prior.to_dict()
    bad["mixture"]["scale_tril"] = bad["mixture"]["scale_tril"].transpose(1, 2)
    with pytest.raises(PriorError, match="lower-triangular"):
        MixturePrior.from_dict(bad)
    with pytest.raises(PriorError, match="unknown prior kind"):
        MixturePrior.from_dict({"kind": "flow"})


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_recovers_a_known_mixture(covariance):
    truth = _two_component_2d()
    if covariance == "diag":
        truth = GaussianMixture(
            truth.weights, truth.means, torch.diag_embed(torch.tensor([[1.2, 0.8], [0.5, 0.4]]))
        )
    x = truth.sample(6000, torch.Generator().manual_seed(0))
    fit = fit_gaussian_mixture(x, 2, covariance, generator=torch.Generator().manual_seed(0))
    assert fit.converged
    order = fit.mixture.weights.argsort()
    assert torch.allclose(fit.mixture.weights[order].float(), truth.weights, atol=0.03)
    assert torch.allclose(fit.mixture.means[order].float(), truth.means, atol=0.1)
    # The fitted density is as good as the truth on fresh data, not better by much.
    fresh = truth.sample(6000, torch.Generator().manual_seed(1))
    gap = fit.mixture.log_prob(fresh.double()).mean() - truth.log_prob(fresh).mean()
    assert abs(gap.item()) < 0.02


def test_merged_class_mixture_weights_each_digit_by_its_share():
    one = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2).unsqueeze(0))
    two = _two_component_2d()
    merged = merge_labelled({1: one, 8: two}, {1: 0.25, 8: 0.75})
    assert merged.labels.tolist() == [1, 8, 8]
    assert torch.allclose(merged.weights.float(), torch.tensor([0.25, 0.75 * 0.3, 0.75 * 0.7]))


def test_a_lone_draw_is_the_same_numbers_as_the_general_path():
    """n=1 skips numpy's searchsorted and fancy indexing (the common `/sample` call); the latent
    for a seed must not change because of it."""
    generator = torch.Generator().manual_seed(3)
    k, d = 7, 5
    a = torch.randn(k, d, d, generator=generator, dtype=torch.float64)
    covs = (a @ a.transpose(1, 2) + 0.1 * torch.eye(d, dtype=torch.float64)).float()
    weights = torch.rand(k, generator=generator)
    mix = GaussianMixture(
        weights / weights.sum(),
        torch.randn(k, d, generator=generator),
        torch.linalg.cholesky(covs),
    )
    means, scale_tril = mix.arrays.means, mix.arrays.scale_tril
    cumulative = np.cumsum(mix.weights.numpy().astype(np.float64))
    for seed in range(300):
        temperature = (1.0, 0.6, 1.4)[seed % 3]
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(1, generator=g, dtype=torch.float64).numpy()
        c = np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), k - 1)
        eps = torch.randn(1, d, 1, generator=g, dtype=torch.float32).numpy()
        expected = torch.from_numpy(means[c] + temperature * (scale_tril[c] @ eps)[..., 0])
        got = mix.sample(1, torch.Generator().manual_seed(seed), temperature)
        assert torch.equal(got, expected), seed
