"""The prior's torch side: what fitting and scoring one in training needs, and no more.

`models.prior` is the prior (NumPy: its checks, its stored form, its drawing, its density), which
the service and the export share. Training fits a mixture by EM in float64 torch (`training.gmm`)
and scores log p(z) of torch tensors, on the GPU too, for the likelihood; `GaussianMixture` is
that mixture's tensors and nothing else. `to_arrays` hands it to `models.prior` (float32, checked
there); `log_density` scores any served prior in torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.prior import LOG_2PI, Mixture, MixturePrior, Prior

_SOLVE_CHUNK = 4096  # rows per triangular solve: bounds memory at K x D x chunk


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """`models.prior.Mixture`'s tensors, of any float dtype and on any device, while it is being
    fitted or scored; unchecked until `to_arrays`."""

    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, D]
    scale_tril: torch.Tensor  # [K, D, D]
    labels: torch.Tensor | None = None  # [K] int64 in 0..9
    covariance: str = "full"

    def to(self, device: torch.device | str) -> GaussianMixture:
        """The same mixture with its tensors on `device` (for log p(z) next to a GPU decoder)."""
        return GaussianMixture(
            *(t.to(device) for t in (self.weights, self.means, self.scale_tril)),
            labels=None if self.labels is None else self.labels.to(device),
            covariance=self.covariance,
        )

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log weights[k] + log N(z; component k), for z [N, D] -> [N, K]."""
        z = z.to(self.means.dtype)
        half_log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [K]
        parts = []
        for chunk in z.split(_SOLVE_CHUNK):
            diff = (chunk.unsqueeze(0) - self.means.unsqueeze(1)).transpose(1, 2)  # [K, D, n]
            white = torch.linalg.solve_triangular(self.scale_tril, diff, upper=False)
            maha = white.pow(2).sum(1).T  # [n, K]
            parts.append(-0.5 * (self.means.shape[1] * LOG_2PI + maha) - half_log_det)
        return torch.cat(parts) + self.weights.log()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z [..., D] -> [...]."""
        flat = z.reshape(-1, z.shape[-1])
        return torch.logsumexp(self.component_log_prob(flat), dim=1).reshape(z.shape[:-1])

    def to_arrays(self) -> Mixture:
        """The stored form, checked by `models.prior`: float32, weights renormalised after the
        cast (a `PriorError` if it is not a density)."""
        weights = self.weights.detach().float().cpu()
        return Mixture(
            (weights / weights.sum()).numpy(),
            self.means.detach().float().cpu().numpy(),
            self.scale_tril.detach().float().cpu().numpy(),
            None if self.labels is None else self.labels.detach().long().cpu().numpy(),
            self.covariance,
        )

    @classmethod
    def from_arrays(cls, mixture: Mixture) -> GaussianMixture:
        labels = None if mixture.labels is None else torch.from_numpy(mixture.labels)
        tensors = (mixture.weights, mixture.means, mixture.scale_tril)
        return cls(*map(torch.from_numpy, tensors), labels=labels, covariance=mixture.covariance)


def standard_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) for z [..., D] -> [...]."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def log_density(prior: Prior, device: torch.device | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(z) of a served prior, on torch tensors on `device`: the likelihood's prior term."""
    if isinstance(prior, MixturePrior):
        return GaussianMixture.from_arrays(prior.mixture).to(device).log_prob
    return standard_log_prob
