"""The training objectives and the likelihood bounds, in nats per image.

The per-image terms (`bernoulli_nll`, `gaussian_kl`) live in `models.likelihood`, which serving
shares; they are re-exported here because the objectives and the evaluation are built on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.likelihood import bernoulli_nll, gaussian_kl

__all__ = [
    "LOSSES",
    "LossTerms",
    "bernoulli_nll",
    "elbo_loss",
    "gaussian_kl",
    "log_normal",
    "log_standard_normal",
    "seed_mse_loss",
]

LOG_2PI = math.log(2 * math.pi)


@dataclass
class LossTerms:
    loss: torch.Tensor  # what the optimiser minimises (batch mean)
    reconstruction: torch.Tensor  # batch mean of -log p(x|z), nats
    kl: torch.Tensor  # batch mean of KL(q(z|x) || p(z)), nats

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.reconstruction + self.kl


def elbo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
) -> LossTerms:
    """Per-image negative ELBO, averaged over the batch; beta < 1 during KL warm-up."""
    rec = bernoulli_nll(logits, target).mean()
    kl = gaussian_kl(mu, logvar).mean()
    return LossTerms(loss=rec + beta * kl, reconstruction=rec, kl=kl)


def seed_mse_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
) -> LossTerms:
    """The lecture notebook's loss, kept only to show why it fails: a pixel-mean MSE is a
    Gaussian decoder with a huge variance, so the summed KL wins and the posterior collapses."""
    rec = F.mse_loss(torch.sigmoid(logits.float()), target.float(), reduction="mean")
    kl = gaussian_kl(mu, logvar).mean()
    return LossTerms(loss=rec + beta * kl, reconstruction=rec, kl=kl)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


LOSSES = {"bernoulli": elbo_loss, "seed-mse": seed_mse_loss}
