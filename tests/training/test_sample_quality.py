"""Sample-quality metrics against hand computations and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from training.sample_quality import (
    confident_fraction,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    inception_score,
    per_digit_accuracy,
)


def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)


def test_inception_score_of_balanced_one_hot_predictions_is_the_class_count():
    probs = torch.eye(10).repeat(7, 1)
    assert inception_score(probs) == pytest.approx(10.0)


def test_inception_score_of_one_confident_class_is_one():
    probs = torch.zeros(20, 10)
    probs[:, 3] = 1.0
    assert inception_score(probs) == pytest.approx(1.0)


def test_inception_score_by_hand():
    # p(y) = (0.75, 0.25); KL rows: log(1/0.75) and 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25).
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    kl = [math.log(1 / 0.75), 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)]
    assert inception_score(probs) == pytest.approx(math.exp(sum(kl) / 2), rel=1e-12)


def test_confident_fraction_counts_rows_at_or_above_the_threshold():
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    assert confident_fraction(probs, 0.9) == pytest.approx(0.5)
    assert confident_fraction(probs, 0.65) == pytest.approx(0.75)


def test_per_digit_accuracy_by_hand():
    probs = torch.tensor([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 1, 2])
    assert per_digit_accuracy(probs, labels) == {0: 1.0, 1: 0.5, 2: 1.0}


def test_frechet_distance_of_identical_sets_is_zero():
    feats = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    # Same covariance exactly, so Tr(A + B - 2 (AB)^(1/2)) = 0 and only ||d||^2 is left.
    feats = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1)) @ torch.randn(
        8, 8, generator=torch.Generator().manual_seed(2)
    )
    shift = torch.arange(8, dtype=torch.float32) / 4
    expected = shift.double().square().sum().item()
    assert frechet_distance(feats, feats + shift) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # Commuting covariances: FD = ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a = torch.tensor([1.0, 4.0, 9.0, 0.25], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 9.0, 1.0], dtype=torch.float64)
    mu_a = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    mu_b = torch.tensor([1.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    expected = (mu_a - mu_b).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    got = frechet_distance_from_stats(mu_a, torch.diag(a), mu_b, torch.diag(b))
    assert got == pytest.approx(expected.item(), rel=1e-10)
    # A common rotation changes nothing.
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)).double())
    rotated = frechet_distance_from_stats(
        q @ mu_a, q @ torch.diag(a) @ q.T, q @ mu_b, q @ torch.diag(b) @ q.T
    )
    assert rotated == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_distance_of_non_commuting_2x2_covariances_is_the_closed_form():
    # For 2x2 PSD A, B: Tr (AB)^(1/2) = sqrt(Tr(AB) + 2 sqrt(det A det B)).
    a = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    mu = torch.zeros(2, dtype=torch.float64)
    trace_sqrt = math.sqrt((a @ b).trace().item() + 2 * math.sqrt(a.det().item() * b.det().item()))
    expected = a.trace().item() + b.trace().item() - 2 * trace_sqrt
    assert frechet_distance_from_stats(mu, a, mu, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_sampled_gaussians_approaches_the_closed_form():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, 0, 0])
    # ||(1, 0, 0)||^2 + 3 (sqrt(1) - sqrt(4))^2 = 1 + 3 = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.02)


def test_gaussian_stats_match_numpy_conventions():
    feats = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mu, cov = gaussian_stats(feats)
    assert mu.tolist() == pytest.approx([3.0, 2.0])
    expected = torch.tensor([[4.0, 2.0], [2.0, 4.0]], dtype=torch.float64)  # unbiased (N - 1)
    torch.testing.assert_close(cov, expected)
