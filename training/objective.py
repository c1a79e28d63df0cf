"""The training objectives and the likelihood bounds, in nats per image.

The Bernoulli ELBO counts only the 784 real MNIST pixels (the 2 px zero padding is cropped before
the cross-entropy), so its numbers are comparable with published MNIST likelihoods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.vae import PAD

LOG_2PI = math.log(2 * math.pi)


@dataclass
class LossTerms:
    loss: torch.Tensor  # what the optimiser minimises (batch mean)
    reconstruction: torch.Tensor  # batch mean of -log p(x|z), nats
    kl: torch.Tensor  # batch mean of KL(q(z|x) || p(z)), nats

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.reconstruction + self.kl


def crop_padding(x: torch.Tensor) -> torch.Tensor:
    return x[..., PAD:-PAD, PAD:-PAD]


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, summed over the 28x28 real pixels: [N]."""
    bce = F.binary_cross_entropy_with_logits(
        crop_padding(logits).float(), crop_padding(target).float(), reduction="none"
    )
    return bce.flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over latent dims: [N]."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


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
