"""The ELBO terms against a hand computation, and the IWAE bound's defining properties."""

import math

import torch

from models.checkpoint import load_checkpoint
from training.evaluate import binarized_test_set, elbo_terms, iwae_log_likelihood
from training.objective import bernoulli_nll, elbo_loss, gaussian_kl, seed_mse_loss


def _hand_bce(logits, target):
    """-sum log Bernoulli(target | sigmoid(logit)) over the central 28x28, one image at a time."""
    total = []
    for lg, tg in zip(logits, target, strict=True):
        s = 0.0
        for i in range(2, 30):
            for j in range(2, 30):
                p = 1 / (1 + math.exp(-lg[0, i, j].item()))
                t = tg[0, i, j].item()
                s -= t * math.log(p) + (1 - t) * math.log(1 - p)
        total.append(s)
    return total


def test_bernoulli_nll_matches_a_hand_computation_over_the_real_pixels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 32, 32, generator=g) * 3
    target = torch.bernoulli(torch.full((2, 1, 32, 32), 0.3), generator=g)
    expected = _hand_bce(logits.double(), target.double())
    got = bernoulli_nll(logits, target)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)


def test_padding_pixels_do_not_count():
    logits = torch.zeros(1, 1, 32, 32)
    target = torch.zeros(1, 1, 32, 32)
    base = bernoulli_nll(logits, target)
    logits[..., 0, 0] = 50.0  # confidently wrong, but in the padding
    assert torch.equal(bernoulli_nll(logits, target), base)
    assert math.isclose(base.item(), 784 * math.log(2), rel_tol=1e-6)


def test_gaussian_kl_matches_the_closed_form_by_hand():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[math.log(2.0), math.log(0.5)]])
    by_hand = sum(0.5 * (m**2 + v - 1 - math.log(v)) for m, v in ((0.5, 2.0), (-1.0, 0.5)))
    assert math.isclose(gaussian_kl(mu, logvar).item(), by_hand, rel_tol=1e-6)
    assert gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


def test_elbo_loss_is_batch_mean_of_per_image_sums_and_beta_weights_kl():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 32, 32, generator=g)
    target = torch.bernoulli(torch.full((4, 1, 32, 32), 0.5), generator=g)
    mu, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    terms = elbo_loss(logits, target, mu, logvar, beta=0.25)
    rec = bernoulli_nll(logits, target).mean()
    kl = gaussian_kl(mu, logvar).mean()
    assert torch.allclose(terms.loss, rec + 0.25 * kl)
    assert torch.allclose(terms.neg_elbo, rec + kl)


def test_seed_mse_loss_is_pixel_mean_mse_plus_summed_kl():
    target = torch.ones(2, 1, 32, 32)
    logits = torch.zeros(2, 1, 32, 32)  # sigmoid = 0.5 everywhere -> MSE 0.25
    mu, logvar = torch.ones(2, 3), torch.zeros(2, 3)
    terms = seed_mse_loss(logits, target, mu, logvar)
    assert math.isclose(terms.reconstruction.item(), 0.25, rel_tol=1e-6)
    assert math.isclose(terms.kl.item(), 1.5, rel_tol=1e-6)


def test_iwae_bounds_the_elbo_and_tightens_as_k_grows(tiny_run, mnist_test):
    model, _ = load_checkpoint(tiny_run / "model.pt")
    x = binarized_test_set(mnist_test.images[:200], seed=0, device=torch.device("cpu"))
    elbo = -elbo_terms(model, x)["neg_elbo"]
    ll = {k: iwae_log_likelihood(model, x, k=k, seed=0).mean().item() for k in (1, 10, 100)}
    assert abs(ll[1] - elbo) < 2.0  # K=1 is the ELBO itself, up to sampling noise
    assert elbo <= ll[10] <= ll[100]
    assert ll[100] - ll[1] > 0.5
