"""Eager PyTorch: the reference runner, and the reconstruct graph every backend exports."""

from __future__ import annotations

import numpy as np
import torch

from models.likelihood import bernoulli_nll, crop_padding, gaussian_kl
from models.vae import ConvVAE


def reconstruct_graph(
    model: ConvVAE, x: torch.Tensor, for_export: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x -> (mu, logvar, reconstruction at the posterior mean, -ELBO at z=mu in nats).

    Exported graphs spell the Bernoulli NLL out in its stable form: the exporter turns
    `binary_cross_entropy_with_logits` into log(sigmoid), which is -inf for a saturated pixel.
    """
    mu, logvar = model.encode(x)
    logits = model.decode_logits(mu)
    nll = _stable_bernoulli_nll(logits, x) if for_export else bernoulli_nll(logits, x)
    neg_elbo = nll + gaussian_kl(mu, logvar)
    return mu, logvar, model.logits_to_means(logits), neg_elbo


def _stable_bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`training.objective.bernoulli_nll` as max(a, 0) - a*t + log1p(exp(-|a|)), per image."""
    a, t = crop_padding(logits), crop_padding(target)
    bce = a.clamp(min=0) - a * t + torch.log1p(torch.exp(-a.abs()))
    return bce.flatten(1).sum(1)


class TorchRunner:
    """Eager PyTorch under `inference_mode`: the reference every other runner is checked against."""

    name = "torch"
    bound = 0.0

    def __init__(self, model: ConvVAE, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.precision = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")

    def _in(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows)).to(self.device, self.dtype)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            mu, logvar = self.model.encode(self._in(x))
            return _out(mu), _out(logvar)

    def decode(self, z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return _out(self.model.decode(self._in(z)))

    def reconstruct(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            outputs = reconstruct_graph(self.model, self._in(x))
            return tuple(_out(t) for t in outputs)


def _out(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()
