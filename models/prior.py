"""Latent priors: the standard normal the VAE was trained with, and a learned Gaussian mixture.

A VAE trained against N(0, I) leaves "holes": regions where the prior has mass but no training
digit encodes, and decoding a draw from there gives a blob. A Gaussian mixture fitted after
training to the encodings of the training set (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders") puts the mass where digits are, and costs nothing at serving time
beyond picking a component and one small matrix product per draw.

A mixture may label its components with digit classes (0..9): then it also samples a chosen digit
(only that class's components), and its responsibilities give p(digit | z) in latent space, with
no decoder pass. Conditional draws use that to refuse latents that sit between classes.

This module fits, scores (log p(z)) and stores the priors, in torch; `to_dict` holds only tensors,
numbers and strings (what `torch.load(weights_only=True)` accepts). Drawing has one home,
`models.prior_arrays` (NumPy, which serving without torch needs too): these classes hand it the
caller's `torch.Generator`, so the same seed gives the same latents here, in the service and in
the torch-free image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch

from models import prior_arrays

LOG_2PI = math.log(2 * math.pi)
NUM_CLASSES = 10
COVARIANCE_TYPES = ("full", "diag")
_SOLVE_CHUNK = 4096  # rows per triangular solve: bounds memory at K x D x chunk


class PriorError(ValueError):
    """A stored prior that cannot be used (wrong shapes, not a density, unknown kind)."""


class LatentPrior(Protocol):
    """What the service, the evaluation and the sampler need from a prior over z."""

    name: str

    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> LatentPrior: ...

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class StandardNormalPrior:
    """N(0, I): what every checkpoint of format version 1 was trained and served with."""

    dim: int
    name: str = "standard"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)

    def to(self, device: torch.device | str) -> StandardNormalPrior:
        return self

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        # Exactly the draw the service made before learned priors existed: same seed, same bytes.
        z = torch.randn(n, self.dim, generator=generator)
        return z if temperature == 1.0 else z * temperature  # x * 1.0 == x: one op less


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """sum_k weights[k] N(means[k], scale_tril[k] scale_tril[k]^T), optionally class-labelled.

    `scale_tril` is the lower Cholesky factor of each covariance (a diagonal one for a
    diagonal-covariance mixture). `labels[k]` is the digit of component k, when known.
    """

    weights: torch.Tensor  # [K]
    means: torch.Tensor  # [K, D]
    scale_tril: torch.Tensor  # [K, D, D]
    labels: torch.Tensor | None = None  # [K] int64 in 0..9
    covariance: str = "full"

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

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
            parts.append(-0.5 * (self.dim * LOG_2PI + maha) - half_log_det)
        return torch.cat(parts) + self.weights.log()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z [..., D] -> [...]."""
        flat = z.reshape(-1, z.shape[-1])
        return torch.logsumexp(self.component_log_prob(flat), dim=1).reshape(z.shape[:-1])

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """n draws; temperature scales each component's standard deviation, not the weights."""
        z = self.arrays.sample(n, TorchRandom(generator), temperature)
        return _on(torch.from_numpy(z), self.means.device)

    @cached_property
    def arrays(self) -> prior_arrays.Mixture:
        """This mixture on NumPy arrays: the one home of the drawing steps, which serving shares."""
        return prior_arrays.mixture_from_dict(self.to_dict())

    def class_log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(digit | z) from the labelled components, z [N, D] -> [N, 10]."""
        if self.labels is None:
            raise PriorError("this mixture's components carry no digit labels")
        log_joint = self.component_log_prob(z)  # [N, K]
        out = log_joint.new_full((len(z), NUM_CLASSES), -math.inf)
        for digit in range(NUM_CLASSES):
            mask = self.labels == digit
            if mask.any():
                out[:, digit] = torch.logsumexp(log_joint[:, mask], dim=1)
        return out - torch.logsumexp(log_joint, dim=1, keepdim=True)

    def digits(self) -> list[int]:
        """The digits this mixture can draw on request (those with at least one component)."""
        return [] if self.labels is None else sorted(set(self.labels.tolist()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "covariance": self.covariance,
            "weights": self.weights.detach().float().cpu().contiguous(),
            "means": self.means.detach().float().cpu().contiguous(),
            "scale_tril": self.scale_tril.detach().float().cpu().contiguous(),
        }
        if self.labels is not None:
            out["labels"] = self.labels.detach().long().cpu().contiguous()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> GaussianMixture:
        if not isinstance(data, dict):
            raise PriorError("a mixture must be a dict of tensors")
        missing = {"weights", "means", "scale_tril"} - set(data)
        if missing:
            raise PriorError(f"mixture is missing {sorted(missing)}")
        tensors = [data[k] for k in ("weights", "means", "scale_tril")]
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
            raise PriorError("mixture weights, means and scale_tril must be float tensors")
        labels = data.get("labels")
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise PriorError("mixture labels must be a tensor")
        return cls(
            *(t.float() for t in tensors),
            labels=None if labels is None else labels.long(),
            covariance=str(data.get("covariance", "full")),
        )


def _validate(m: GaussianMixture) -> None:
    if m.covariance not in COVARIANCE_TYPES:
        raise PriorError(f"unknown covariance {m.covariance!r}; expected one of {COVARIANCE_TYPES}")
    if m.weights.ndim != 1 or m.means.ndim != 2 or m.scale_tril.ndim != 3:
        raise PriorError("mixture tensors must be weights [K], means [K, D], scale_tril [K, D, D]")
    k, d = m.means.shape
    if k < 1 or len(m.weights) != k or m.scale_tril.shape != (k, d, d):
        raise PriorError(
            f"mixture shapes disagree: weights {tuple(m.weights.shape)}, means {(k, d)}, "
            f"scale_tril {tuple(m.scale_tril.shape)}"
        )
    if not all(torch.isfinite(t).all() for t in (m.weights, m.means, m.scale_tril)):
        raise PriorError("mixture holds NaN or infinite values")
    if (m.weights < 0).any() or abs(m.weights.sum().item() - 1.0) > 1e-3:
        raise PriorError("mixture weights must be non-negative and sum to 1")
    if not torch.equal(m.scale_tril, m.scale_tril.tril()):
        raise PriorError("scale_tril must be lower-triangular")
    if (m.scale_tril.diagonal(dim1=-2, dim2=-1) <= 0).any():
        raise PriorError("scale_tril must have a positive diagonal")
    if m.labels is not None and (
        m.labels.shape != (k,) or (m.labels < 0).any() or (m.labels >= NUM_CLASSES).any()
    ):
        raise PriorError(f"labels must be {k} digits in 0..{NUM_CLASSES - 1}")


@dataclass(frozen=True, eq=False)
class MixturePrior:
    """The learned prior a checkpoint carries: one mixture for log p(z) and plain sampling, and
    optionally a class-labelled mixture for drawing a chosen digit.

    Conditional draws are kept only when the labelled mixture itself gives the asked digit a
    posterior of at least `accept_threshold` (latent space only, no decoder pass); a refused draw
    is redrawn, at most `max_rounds` times, from the same generator, so it stays deterministic.
    """

    mixture: GaussianMixture
    classes: GaussianMixture | None = None
    accept_threshold: float = 0.0
    max_rounds: int = 32
    config: dict[str, Any] = field(default_factory=dict)
    name: str = "mixture"
    # "classes": plain draws come from the class mixture (the encodings' own spread), while
    # log p(z) is `mixture` (those components widened by the posterior noise: the aggregate
    # posterior). Decoding an encoding rather than a noisy latent is what reconstructions do too.
    draw_from: str = "mixture"

    def __post_init__(self) -> None:
        if self.classes is not None:
            if self.classes.labels is None:
                raise PriorError("the class mixture's components need digit labels")
            if self.classes.dim != self.mixture.dim:
                raise PriorError("the class mixture and the mixture have different latent sizes")
        if not 0.0 <= self.accept_threshold < 1.0:
            raise PriorError("accept_threshold must be in [0, 1)")
        if self.max_rounds < 1:
            raise PriorError("max_rounds must be >= 1")
        if self.draw_from not in ("mixture", "classes"):
            raise PriorError(f"draw_from must be 'mixture' or 'classes', not {self.draw_from!r}")
        if self.draw_from == "classes" and self.classes is None:
            raise PriorError("draw_from 'classes' needs a class mixture")

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def digits(self) -> list[int]:
        return [] if self.classes is None else self.classes.digits()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.mixture.log_prob(z)

    def to(self, device: torch.device | str) -> MixturePrior:
        return replace(
            self,
            mixture=self.mixture.to(device),
            classes=None if self.classes is None else self.classes.to(device),
        )

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        z = self.arrays.sample(n, TorchRandom(generator), temperature)
        return _on(torch.from_numpy(z), self.mixture.means.device)

    def sample_digits(
        self,
        digits: torch.Tensor | list[int],
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """One latent per entry of `digits`, each drawn from that digit's components."""
        if self.classes is None:
            raise PriorError("this prior has no per-digit mixtures")
        digits = torch.as_tensor(digits, dtype=torch.long).reshape(-1)
        unknown = sorted(set(digits.tolist()) - set(self.digits()))
        if unknown:
            raise PriorError(f"this prior cannot draw digit(s) {unknown}")
        z = self.arrays.sample_digits(digits.numpy(), TorchRandom(generator), temperature)
        return _on(torch.from_numpy(z), self.mixture.means.device)

    @cached_property
    def arrays(self) -> prior_arrays.MixturePrior:
        """This prior on NumPy arrays: the one home of the drawing steps, which serving shares."""
        return prior_arrays.prior_from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "gaussian-mixture",
            "mixture": self.mixture.to_dict(),
            "classes": None if self.classes is None else self.classes.to_dict(),
            "accept_threshold": float(self.accept_threshold),
            "max_rounds": int(self.max_rounds),
            "draw_from": self.draw_from,
            "config": dict(self.config),
        }

    @classmethod
    def from_dict(cls, data: Any) -> MixturePrior:
        if not isinstance(data, dict) or data.get("kind") != "gaussian-mixture":
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise PriorError(f"unknown prior kind {kind!r}")
        classes = data.get("classes")
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise PriorError("prior config must be a dict")
        return cls(
            mixture=GaussianMixture.from_dict(data.get("mixture")),
            classes=None if classes is None else GaussianMixture.from_dict(classes),
            accept_threshold=float(data.get("accept_threshold", 0.0)),
            max_rounds=int(data.get("max_rounds", 32)),
            draw_from=str(data.get("draw_from", "mixture")),
            config=config,
        )


class TorchRandom:
    """A `torch.Generator` as a `models.prior_arrays.RandomSource`: the arrays' priors then draw
    exactly what this module's priors draw from the same generator."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def rand_float64(self, *shape: int) -> np.ndarray:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64).numpy()

    def randn_float32(self, *shape: int) -> np.ndarray:
        return torch.randn(*shape, generator=self.generator).numpy()


def as_arrays(prior: LatentPrior) -> prior_arrays.Prior:
    """The prior's drawing side on NumPy arrays (`models.prior_arrays`), for serving."""
    if isinstance(prior, MixturePrior):
        return prior.arrays
    return prior_arrays.StandardNormal(int(prior.dim))


def _on(z: torch.Tensor, device: torch.device) -> torch.Tensor:
    return z if device.type == "cpu" else z.to(device)
