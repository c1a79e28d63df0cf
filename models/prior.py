"""Latent priors, in NumPy: the standard normal the VAE was trained with, and a learned mixture.

A VAE trained against N(0, I) leaves "holes": regions where the prior has mass but no training
digit encodes, and decoding a draw from there gives a blob. A Gaussian mixture fitted after
training to the encodings of the training set (Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders") puts the mass where digits are, and costs nothing at serving time
beyond picking a component and one small matrix product per draw.

A mixture may label its components with digit classes (0..9): then it also samples a chosen digit
(only that class's components), and its responsibilities give p(digit | z) in latent space, with
no decoder pass. Conditional draws use that to refuse latents that sit between classes.

This is the one home of the prior: its checks, its stored form (`to_dict`, `from_dict`: what a
checkpoint holds, as tensors or arrays), its drawing and its density. It needs no torch, so the
torch checkpoint, the export and the torch-free image serve the very same prior; training fits
one in torch (`training.mixture`) and hands it over as arrays. Every draw takes its random numbers
from a `RandomSource`: `models.torch_rng.TorchCompatibleGenerator(seed)` wherever a seed is drawn.
An .npz carries a prior without torch (`models.prior_npz`).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import numpy as np

NUM_CLASSES = 10
LOG_2PI = math.log(2 * math.pi)
COVARIANCE_TYPES = ("full", "diag")
DRAW_FROM = ("mixture", "classes")
MAX_ROUNDS = 1024  # the shipped prior redraws up to 32 times; more is a stuck request
SCORE_ROWS = 512  # rows scored per step of `MixturePrior.sample_digits_in_steps` (~15 ms on a CPU)


class PriorError(ValueError):
    """A prior that cannot be used (wrong shapes, not a density, unknown kind, damaged file)."""


class RandomSource(Protocol):
    """The two draws the priors make: `torch.rand(float64)` and float32 `torch.randn`."""

    def rand_float64(self, *shape: int) -> np.ndarray: ...

    def randn_float32(self, *shape: int) -> np.ndarray: ...


@dataclass(frozen=True)
class StandardNormal:
    """N(0, I): the prior of a checkpoint without a learned one (every format version 1 file)."""

    dim: int
    name: str = "standard"

    def sample(self, n: int, rng: RandomSource, temperature: float = 1.0) -> np.ndarray:
        z = rng.randn_float32(n, self.dim)
        return z if temperature == 1.0 else z * np.float32(temperature)

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        return -0.5 * (LOG_2PI + np.square(z.astype(np.float64))).sum(-1)

    def digits(self) -> list[int]:
        return []


@dataclass(frozen=True, eq=False)
class Mixture:
    """sum_k weights[k] N(means[k], scale_tril[k] scale_tril[k]^T), optionally class-labelled:
    weights [K], means [K, D], scale_tril [K, D, D] (float32, the lower Cholesky factors),
    labels [K] (int64 digits) or None. Checked when made: a mixture that exists is a density."""

    weights: np.ndarray
    means: np.ndarray
    scale_tril: np.ndarray
    labels: np.ndarray | None = None
    covariance: str = "full"

    def __post_init__(self) -> None:
        _check_mixture(self)

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @cached_property
    def _cumulative(self) -> np.ndarray:
        return np.cumsum(self.weights.astype(np.float64))

    def sample(self, n: int, rng: RandomSource, temperature: float = 1.0) -> np.ndarray:
        """n draws; temperature scales each component's standard deviation, not the weights."""
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        u = rng.rand_float64(n)
        cumulative = self._cumulative
        last = cumulative.shape[0] - 1
        component = np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), last)
        return self._at(component, rng, temperature)

    def draw(self, probs: np.ndarray, rng: RandomSource, temperature: float) -> np.ndarray:
        """One draw per row of `probs` [n, K] (component probabilities, unnormalised)."""
        n = len(probs)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        u = rng.rand_float64(n, 1)
        cumulative = np.cumsum(probs.astype(np.float64), axis=1)
        component = np.minimum((cumulative <= u * cumulative[:, -1:]).sum(1), self.n_components - 1)
        return self._at(component, rng, temperature)

    def _at(self, component: np.ndarray, rng: RandomSource, temperature: float) -> np.ndarray:
        means, scale_tril = self.means[component], self.scale_tril[component]
        n, dim = means.shape
        eps = rng.randn_float32(n, dim, 1)
        return means + temperature * (scale_tril @ eps)[..., 0]

    @cached_property
    def _whitening(self) -> tuple[np.ndarray, np.ndarray]:
        """The inverse Cholesky factors and log weights - half log-determinants, made once."""
        tril = self.scale_tril.astype(np.float64)
        inverse = np.linalg.inv(tril)
        half_log_det = np.log(np.diagonal(tril, axis1=1, axis2=2)).sum(-1)
        with np.errstate(divide="ignore"):
            offset = np.log(self.weights.astype(np.float64)) - half_log_det
        return inverse, offset

    def component_log_prob(self, z: np.ndarray) -> np.ndarray:
        """log weights[k] + log N(z; component k), z [N, D] -> [N, K], in float64."""
        inverse, offset = self._whitening
        diff = z.astype(np.float64)[:, None, :] - self.means.astype(np.float64)[None]  # [N, K, D]
        # [K, N, D] @ [K, D, D]: one BLAS matmul per component, 5x an einsum's loop
        white = np.matmul(diff.transpose(1, 0, 2), inverse.transpose(0, 2, 1)).transpose(1, 0, 2)
        return -0.5 * (self.dim * LOG_2PI + (white**2).sum(-1)) + offset

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        """log p(z), z [N, D] -> [N]."""
        return _logsumexp(self.component_log_prob(z))

    def class_log_posterior(self, z: np.ndarray) -> np.ndarray:
        """log p(digit | z) from the labelled components, z [N, D] -> [N, 10]."""
        if self.labels is None:
            raise PriorError("this mixture's components carry no digit labels")
        log_joint = self.component_log_prob(z)  # [N, K]
        out = np.full((len(z), NUM_CLASSES), -np.inf)
        for digit in range(NUM_CLASSES):
            mask = self.labels == digit
            if mask.any():
                out[:, digit] = _logsumexp(log_joint[:, mask])
        return out - _logsumexp(log_joint)[:, None]

    def digits(self) -> list[int]:
        """The digits this mixture can draw on request (those with at least one component)."""
        return [] if self.labels is None else sorted({int(d) for d in self.labels})

    def to_dict(self) -> dict[str, Any]:
        """The stored form (arrays; a checkpoint stores them as tensors)."""
        out: dict[str, Any] = {
            "covariance": self.covariance,
            "weights": self.weights,
            "means": self.means,
            "scale_tril": self.scale_tril,
        }
        if self.labels is not None:
            out["labels"] = self.labels
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Mixture:
        """From `to_dict()`'s form, arrays or CPU tensors; `PriorError` says what is wrong."""
        if not isinstance(data, dict):
            raise PriorError("a mixture must be a dict of arrays")
        missing = {"weights", "means", "scale_tril"} - set(data)
        if missing:
            raise PriorError(f"mixture is missing {sorted(missing)}")
        reals = [_array(data, key, "fiu", np.float32) for key in ("weights", "means", "scale_tril")]
        labels = None if data.get("labels") is None else _array(data, "labels", "iu", np.int64)
        return cls(*reals, labels=labels, covariance=str(data.get("covariance", "full")))


_KIND_NAMES = {"iu": "integers", "fiu": "real numbers"}


def _array(data: dict[str, Any], key: str, kinds: str, dtype: type) -> np.ndarray:
    """data[key] as an array of `dtype`; labels are integers and the rest real numbers, since a
    cast from anything else would silently change them."""
    try:
        value = np.asarray(data[key])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PriorError(f"mixture {key} is not an array: {exc}") from None
    if value.dtype.kind not in kinds:
        raise PriorError(f"mixture {key} holds {value.dtype} values, not {_KIND_NAMES[kinds]}")
    return np.ascontiguousarray(value, dtype=dtype)


def _check_mixture(m: Mixture) -> None:
    if m.covariance not in COVARIANCE_TYPES:
        raise PriorError(f"unknown covariance {m.covariance!r}; expected one of {COVARIANCE_TYPES}")
    if m.weights.ndim != 1 or m.means.ndim != 2 or m.scale_tril.ndim != 3:
        raise PriorError("mixture arrays must be weights [K], means [K, D], scale_tril [K, D, D]")
    k, d = m.means.shape
    if k < 1 or len(m.weights) != k or m.scale_tril.shape != (k, d, d):
        raise PriorError(
            f"mixture shapes disagree: weights {m.weights.shape}, means {(k, d)}, "
            f"scale_tril {m.scale_tril.shape}"
        )
    if not all(np.isfinite(a).all() for a in (m.weights, m.means, m.scale_tril)):
        raise PriorError("mixture holds NaN or infinite values")
    if (m.weights < 0).any() or abs(float(m.weights.sum(dtype=np.float64)) - 1.0) > 1e-3:
        raise PriorError("mixture weights must be non-negative and sum to 1")
    if not np.array_equal(m.scale_tril, np.tril(m.scale_tril)):
        raise PriorError("scale_tril must be lower-triangular")
    if not (np.diagonal(m.scale_tril, axis1=1, axis2=2) > 0).all():
        raise PriorError("scale_tril must have a positive diagonal")
    if m.labels is not None and (
        m.labels.shape != (k,) or (m.labels < 0).any() or (m.labels >= NUM_CLASSES).any()
    ):
        raise PriorError(f"labels must be {k} digits in 0..{NUM_CLASSES - 1}")


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return safe + np.log(np.exp(a - safe[:, None]).sum(axis=1))


@dataclass(frozen=True, eq=False)
class MixturePrior:
    """The learned prior a checkpoint carries: one mixture for log p(z) and plain sampling, and
    optionally a class-labelled mixture for drawing a chosen digit.

    Conditional draws are kept only when the labelled mixture itself gives the asked digit a
    posterior of at least `accept_threshold` (latent space only, no decoder pass); a refused draw
    is redrawn, at most `max_rounds` times, from the same generator, so it stays deterministic.
    """

    mixture: Mixture
    classes: Mixture | None = None
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
        if not 1 <= self.max_rounds <= MAX_ROUNDS:
            raise PriorError(f"max_rounds must be 1..{MAX_ROUNDS}, not {self.max_rounds}")
        if self.draw_from not in DRAW_FROM:
            raise PriorError(f"draw_from must be 'mixture' or 'classes', not {self.draw_from!r}")
        if self.draw_from == "classes" and self.classes is None:
            raise PriorError("draw_from 'classes' needs a class mixture")

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def digits(self) -> list[int]:
        return [] if self.classes is None else self.classes.digits()

    def log_prob(self, z: np.ndarray) -> np.ndarray:
        return self.mixture.log_prob(z)

    def sample(self, n: int, rng: RandomSource, temperature: float = 1.0) -> np.ndarray:
        source = self.classes if self.draw_from == "classes" else self.mixture
        assert source is not None
        return source.sample(n, rng, temperature)

    def sample_digits(
        self, digits: np.ndarray | list[int], rng: RandomSource, temperature: float = 1.0
    ) -> np.ndarray:
        """One latent per entry of `digits`, each from that digit's components; draws the
        labelled mixture calls another digit are redrawn (see the class docstring)."""
        return run_to_end(self.sample_digits_in_steps(digits, rng, temperature))

    def sample_digits_in_steps(
        self, digits: np.ndarray | list[int], rng: RandomSource, temperature: float = 1.0
    ) -> Generator[None, None, np.ndarray]:
        """`sample_digits` in steps of at most `SCORE_ROWS` rows scored (the costly part), for a
        caller that gives its thread to other work between steps; the very same draws."""
        if self.classes is None or self.classes.labels is None:
            raise PriorError("this prior has no per-digit mixtures")
        digits = np.asarray(digits, dtype=np.int64).reshape(-1)
        unknown = sorted(set(np.unique(digits).tolist()) - set(self.digits()))
        if unknown:
            raise PriorError(f"this prior cannot draw digit(s) {unknown}")
        mix = self.classes
        probs = mix.weights[None, :] * (mix.labels[None, :] == digits[:, None])
        z = mix.draw(probs, rng, temperature)
        if self.accept_threshold <= 0.0:
            return z
        score = yield from _scores(mix, z, digits)
        log_threshold = math.log(self.accept_threshold)
        for _ in range(self.max_rounds - 1):
            refused = np.flatnonzero(score < log_threshold)
            if len(refused) == 0:
                break
            again = mix.draw(probs[refused], rng, temperature)
            again_score = yield from _scores(mix, again, digits[refused])
            better = again_score > score[refused]
            z[refused[better]] = again[better]
            score[refused[better]] = again_score[better]
        return z

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores under `prior` (`models.checkpoint` makes the arrays tensors)."""
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
        """From `to_dict()`'s form (arrays, or the tensors a checkpoint holds)."""
        if not isinstance(data, dict) or data.get("kind") != "gaussian-mixture":
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise PriorError(f"unknown prior kind {kind!r}")
        classes = data.get("classes")
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise PriorError("prior config must be a dict")
        try:
            rules = float(data.get("accept_threshold", 0.0)), int(data.get("max_rounds", 32))
        except (TypeError, ValueError, OverflowError) as exc:
            raise PriorError(f"the prior's accept_threshold or max_rounds: {exc}") from None
        return cls(
            mixture=Mixture.from_dict(data.get("mixture")),
            classes=None if classes is None else Mixture.from_dict(classes),
            accept_threshold=rules[0],
            max_rounds=rules[1],
            draw_from=str(data.get("draw_from", "mixture")),
            config=config,
        )


def _scores(mix: Mixture, z: np.ndarray, digits: np.ndarray) -> Generator[None, None, np.ndarray]:
    """log p(digit | z) of each row's own digit, `SCORE_ROWS` rows a step."""
    parts = []
    for start in range(0, len(z), SCORE_ROWS):
        rows = slice(start, start + SCORE_ROWS)
        chunk = z[rows]
        parts.append(mix.class_log_posterior(chunk)[np.arange(len(chunk)), digits[rows]])
        yield
    return np.concatenate(parts) if parts else np.zeros(0)


T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Runs a generator of steps through and returns its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


Prior = StandardNormal | MixturePrior


def describe(prior: Prior) -> dict[str, Any]:
    """A short JSON-able summary for /model and logs."""
    if isinstance(prior, MixturePrior):
        return {
            "name": prior.name,
            "components": prior.mixture.n_components,
            "covariance": prior.mixture.covariance,
            "digits": prior.digits(),
            "accept_threshold": prior.accept_threshold,
            "draws_from": prior.draw_from,
            **{k: v for k, v in prior.config.items() if isinstance(v, str | int | float | bool)},
        }
    return {"name": prior.name, "components": 1, "covariance": "identity", "digits": []}
