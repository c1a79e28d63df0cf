"""The per-image likelihood terms of the VAE, in nats: what both training and serving compute.

They live beside the model, not in `training/`, because the service reports `-ELBO` for every
reconstruction and must not depend on the training package. The Bernoulli term counts only the
784 real MNIST pixels (the 2 px zero padding is cropped first), so its numbers are comparable
with published MNIST likelihoods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.vae import PAD


def crop_padding(x: torch.Tensor) -> torch.Tensor:
    """[..., 32, 32] -> [..., 28, 28]: the real MNIST pixels without the zero border."""
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
