"""Expectation-maximisation for Gaussian mixtures, in torch (float64 on the CPU).

Written here rather than taken from scikit-learn: the fit is 60 lines, the result has to be a
`training.mixture.GaussianMixture` of torch tensors anyway, and the project does not otherwise need
scikit-learn. Initialisation is k-means++ followed by a few Lloyd steps, all from the caller's
generator, so a fit is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.prior import COVARIANCE_TYPES
from training.mixture import GaussianMixture


@dataclass
class FitResult:
    mixture: GaussianMixture
    log_likelihood: float  # mean per point on the fitting data, at the end
    iterations: int
    converged: bool


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k initial centres, each drawn with probability proportional to its squared distance."""
    first = torch.randint(len(x), (1,), generator=generator)
    centres = [x[first]]
    dist = (x - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        pick = torch.multinomial(dist.clamp_min(0) + 1e-12, 1, generator=generator)
        centres.append(x[pick])
        dist = torch.minimum(dist, (x - x[pick]).pow(2).sum(1))
    return torch.cat(centres)


def lloyd(x: torch.Tensor, centres: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Hard assignments after a few k-means steps; an emptied centre keeps its old place."""
    for _ in range(steps):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=len(centres)).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return torch.cdist(x, centres).argmin(1)


def m_step(
    x: torch.Tensor, resp: torch.Tensor, covariance: str, reg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, means and Cholesky factors from responsibilities resp [N, K]."""
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (resp.T @ x) / nk.unsqueeze(1)
    d = x.shape[1]
    eye = torch.eye(d, dtype=x.dtype)
    if covariance == "diag":
        var = (resp.T @ x.pow(2)) / nk.unsqueeze(1) - means.pow(2) + reg
        scale_tril = torch.diag_embed(var.clamp_min(reg).sqrt())
    else:
        covs = torch.empty(len(nk), d, d, dtype=x.dtype)
        for k in range(len(nk)):
            diff = x - means[k]
            covs[k] = (resp[:, k, None] * diff).T @ diff / nk[k] + reg * eye
        scale_tril = torch.linalg.cholesky(covs)
    return nk / nk.sum(), means, scale_tril


def fit_gaussian_mixture(
    x: torch.Tensor,
    n_components: int,
    covariance: str = "full",
    *,
    generator: torch.Generator,
    max_iterations: int = 100,
    tol: float = 1e-3,
    reg: float = 1e-4,
) -> FitResult:
    """Maximum-likelihood mixture of x [N, D] by EM; stops when the mean log-likelihood per point
    improves by less than `tol` nats. `reg` is added to every covariance's diagonal (as
    scikit-learn's `reg_covar`), which keeps components of few points well conditioned."""
    if covariance not in COVARIANCE_TYPES:
        raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}")
    if not 1 <= n_components <= len(x):
        raise ValueError(f"need 1 <= n_components <= {len(x)} points; got {n_components}")
    x = x.double()
    assign = lloyd(x, kmeans_plus_plus(x, n_components, generator))
    resp = torch.nn.functional.one_hot(assign, n_components).double()
    previous = -float("inf")
    mean_ll = previous
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007 - reported below
        weights, means, scale_tril = m_step(x, resp, covariance, reg)
        mixture = GaussianMixture(weights, means, scale_tril, covariance=covariance)
        log_joint = mixture.component_log_prob(x)
        log_px = torch.logsumexp(log_joint, dim=1, keepdim=True)
        resp = (log_joint - log_px).exp()
        mean_ll = log_px.mean().item()
        if mean_ll - previous < tol:
            converged = True
            break
        previous = mean_ll
    return FitResult(mixture, mean_ll, iteration, converged)


def merge_labelled(mixtures: dict[int, GaussianMixture], class_weights: dict[int, float]):
    """One class-labelled mixture from per-digit mixtures: weight p(digit) * w_k within digit."""
    digits = sorted(mixtures)
    total = sum(class_weights[d] for d in digits)
    weights = torch.cat([mixtures[d].weights.double() * class_weights[d] / total for d in digits])
    labels = torch.cat([torch.full((len(mixtures[d].weights),), d) for d in digits])
    return GaussianMixture(
        weights / weights.sum(),
        torch.cat([mixtures[d].means.double() for d in digits]),
        torch.cat([mixtures[d].scale_tril.double() for d in digits]),
        labels=labels,
        covariance=mixtures[digits[0]].covariance,
    )


def widen(mixture: GaussianMixture, extra_variance: torch.Tensor) -> GaussianMixture:
    """The same components with `extra_variance` [K, D] added to each covariance's diagonal: a
    mixture fitted to posterior means, widened by the posterior noise, approximates the
    aggregate posterior E_x q(z|x) (what log p(z) should match for the likelihood)."""
    cov = mixture.scale_tril.double() @ mixture.scale_tril.double().transpose(1, 2)
    cov = cov + torch.diag_embed(extra_variance.double())
    return GaussianMixture(
        mixture.weights,
        mixture.means,
        torch.linalg.cholesky(cov).to(mixture.scale_tril.dtype),
        labels=mixture.labels,
        covariance="full",
    )
