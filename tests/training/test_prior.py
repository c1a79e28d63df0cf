"""The learned prior: densities against hand computations, seeded sampling, its stored form and
its checks, EM, per-digit draws, and the torch side that training scores with."""

import math

import numpy as np
import pytest
import torch

from models.prior import Mixture, MixturePrior, PriorError, StandardNormal
from models.torch_rng import TorchCompatibleGenerator
from training.gmm import fit_gaussian_mixture, merge_labelled
from training.mixture import GaussianMixture, log_density, standard_log_prob


def _two_component_2d() -> Mixture:
    covs = np.array([[[2.0, 0.6], [0.6, 1.0]], [[0.5, -0.2], [-0.2, 0.3]]])
    return Mixture(
        weights=np.array([0.3, 0.7], np.float32),
        means=np.array([[1.0, -1.0], [-2.0, 0.5]], np.float32),
        scale_tril=np.linalg.cholesky(covs).astype(np.float32),
        labels=np.array([3, 7]),
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


def test_mixture_log_density_matches_a_hand_computation_in_numpy_and_in_torch():
    mix = _two_component_2d()
    tril = mix.scale_tril.astype(np.float64)
    covs = tril @ tril.transpose(0, 2, 1)
    points = np.array([[0.0, 0.0], [1.0, -1.0], [-2.0, 0.5], [3.0, 2.0], [-1.0, -3.0]])
    in_torch = GaussianMixture.from_arrays(mix).log_prob(torch.from_numpy(points).float())
    for z, value, torch_value in zip(points, mix.log_prob(points), in_torch, strict=True):
        expected = _by_hand(z, [0.3, 0.7], mix.means.astype(np.float64), covs)
        assert value == pytest.approx(expected, abs=1e-6)
        assert torch_value.item() == pytest.approx(expected, abs=1e-5)


def test_torch_log_density_keeps_leading_shape_and_standard_normal_is_the_closed_form():
    prior = MixturePrior(_two_component_2d())
    z = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0))
    log_p = log_density(prior, "cpu")
    assert log_p(z).shape == (4, 3)
    assert torch.allclose(log_p(z)[1, 2], log_p(z[1, 2]))
    expected = -math.log(2 * math.pi) - 0.5 * z.pow(2).sum(-1)
    assert torch.allclose(log_density(StandardNormal(2), "cpu")(z), expected)
    assert np.allclose(StandardNormal(2).log_prob(z.numpy()), expected.numpy(), atol=1e-6)


def test_one_component_identity_mixture_is_the_standard_normal():
    eye = np.eye(5, dtype=np.float32)[None]
    mix = Mixture(np.ones(1, np.float32), np.zeros((1, 5), np.float32), eye)
    z = np.random.default_rng(1).standard_normal((10, 5))
    assert np.allclose(mix.log_prob(z), StandardNormal(5).log_prob(z), atol=1e-6)
    assert torch.allclose(standard_log_prob(torch.from_numpy(z)), torch.from_numpy(mix.log_prob(z)))


def test_sampling_is_seeded_and_matches_the_moments():
    mix = _two_component_2d()
    draw = lambda seed, t=1.0: mix.sample(20_000, TorchCompatibleGenerator(seed), t)  # noqa: E731
    assert np.array_equal(draw(5), draw(5))
    assert not np.array_equal(draw(5), draw(6))
    z = draw(5).astype(np.float64)
    mean = (mix.weights[:, None] * mix.means).sum(0)
    assert np.allclose(z.mean(0), mean, atol=0.05)
    assert draw(5, 2.0).var(0).sum() > z.var(0).sum() > draw(5, 0.5).var(0).sum()


def test_standard_normal_draw_is_the_generators_normals_times_the_temperature():
    expected = TorchCompatibleGenerator(42).randn_float32(3, 8) * np.float32(0.7)
    assert np.array_equal(StandardNormal(8).sample(3, TorchCompatibleGenerator(42), 0.7), expected)


def test_digit_draws_come_from_that_digits_components_and_are_seeded():
    prior = MixturePrior(_two_component_2d(), classes=_two_component_2d(), accept_threshold=0.9)
    digits = [7, 3, 7, 7, 3]
    z = prior.sample_digits(digits, TorchCompatibleGenerator(0))
    assert np.array_equal(z, prior.sample_digits(digits, TorchCompatibleGenerator(0)))
    post = np.exp(prior.classes.class_log_posterior(z))
    assert post.shape == (5, 10)
    assert np.allclose(post.sum(1), 1.0)
    assert all(post[i, d] >= 0.9 for i, d in enumerate(digits))  # the acceptance step held
    with pytest.raises(PriorError, match=r"digit\(s\) \[4\]"):
        prior.sample_digits([4], TorchCompatibleGenerator(0))


def test_stored_form_round_trips_from_arrays_and_tensors_and_bad_ones_are_refused():
    prior = MixturePrior(_two_component_2d(), classes=_two_component_2d(), accept_threshold=0.5)
    stored = prior.to_dict()
    as_tensors = {**stored, "mixture": {k: torch.as_tensor(v) if k != "covariance" else v
                                        for k, v in stored["mixture"].items()}}  # fmt: skip
    z = np.random.default_rng(0).standard_normal((6, 2))
    for form in (stored, as_tensors):
        back = MixturePrior.from_dict(form)
        assert np.array_equal(back.log_prob(z), prior.log_prob(z))
        assert back.digits() == [3, 7] and back.accept_threshold == 0.5
    damages = {
        "sum to 1": ("weights", np.array([0.5, 0.9], np.float32)),
        "lower-triangular": ("scale_tril", stored["mixture"]["scale_tril"].transpose(0, 2, 1)),
        "positive diagonal": ("scale_tril", -stored["mixture"]["scale_tril"]),
        "NaN or infinite": ("means", np.full((2, 2), np.nan, np.float32)),
        "shapes disagree": ("means", np.zeros((3, 2), np.float32)),
        "not real numbers": ("means", np.full((2, 2), "x")),
        "not integers": ("labels", np.array([3.5, 7.0])),
        "digits in 0..9": ("labels", np.array([3, 12])),
    }
    for reason, (key, value) in damages.items():
        bad = MixturePrior(_two_component_2d()).to_dict()
        bad["mixture"][key] = value
        with pytest.raises(PriorError, match=reason):
            MixturePrior.from_dict(bad)
    for rules, reason in [
        ({"kind": "flow"}, "unknown prior kind"),
        ({**stored, "accept_threshold": 1.0}, "accept_threshold"),
        ({**stored, "max_rounds": 10**9}, "max_rounds must be 1..1024"),
        ({**stored, "draw_from": "elsewhere"}, "draw_from"),
        ({**stored, "classes": None, "draw_from": "classes"}, "needs a class mixture"),
    ]:
        with pytest.raises(PriorError, match=reason):
            MixturePrior.from_dict(rules)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_recovers_a_known_mixture(covariance):
    truth = _two_component_2d()
    if covariance == "diag":
        diag = np.array([[[1.2, 0], [0, 0.8]], [[0.5, 0], [0, 0.4]]], np.float32)
        truth = Mixture(truth.weights, truth.means, diag, covariance="diag")
    x = torch.from_numpy(truth.sample(6000, TorchCompatibleGenerator(0)))
    fit = fit_gaussian_mixture(x, 2, covariance, generator=torch.Generator().manual_seed(0))
    assert fit.converged
    fitted = fit.mixture.to_arrays()  # the stored form passes the prior's checks
    order = fitted.weights.argsort()
    assert np.allclose(fitted.weights[order], truth.weights, atol=0.03)
    assert np.allclose(fitted.means[order], truth.means, atol=0.1)
    # The fitted density is as good as the truth on fresh data, not better by much.
    fresh = truth.sample(6000, TorchCompatibleGenerator(1))
    assert abs(fitted.log_prob(fresh).mean() - truth.log_prob(fresh).mean()) < 0.02


def test_merged_class_mixture_weights_each_digit_by_its_share():
    one = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2).unsqueeze(0))
    two = GaussianMixture.from_arrays(_two_component_2d())
    merged = merge_labelled({1: one, 8: two}, {1: 0.25, 8: 0.75}).to_arrays()
    assert merged.labels.tolist() == [1, 8, 8]
    assert np.allclose(merged.weights, [0.25, 0.75 * 0.3, 0.75 * 0.7])


def test_a_lone_draw_is_the_same_numbers_as_the_general_path():
    """n=1 skips numpy's searchsorted and fancy indexing (the common `/sample` call); the latent
    for a seed must not change because of it."""
    rng = np.random.default_rng(3)
    k, d = 7, 5
    a = rng.standard_normal((k, d, d))
    covs = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d)
    weights = rng.random(k)
    mix = Mixture(
        (weights / weights.sum()).astype(np.float32),
        rng.standard_normal((k, d)).astype(np.float32),
        np.linalg.cholesky(covs).astype(np.float32),
    )
    cumulative = np.cumsum(mix.weights.astype(np.float64))
    for seed in range(300):
        temperature = (1.0, 0.6, 1.4)[seed % 3]
        g = TorchCompatibleGenerator(seed)
        u = g.rand_float64(1)
        c = np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), k - 1)
        eps = g.randn_float32(1, d, 1)
        expected = mix.means[c] + temperature * (mix.scale_tril[c] @ eps)[..., 0]
        got = mix.sample(1, TorchCompatibleGenerator(seed), temperature)
        assert np.array_equal(got, expected), seed
