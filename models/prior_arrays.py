"""The priors' drawing side in NumPy: the one home of how a latent is drawn, torch or not.

`models.prior` fits, scores and stores the priors, in torch. Drawing lives here, on NumPy arrays,
because a torch-free image must draw the very latents the full image draws for a seed; the torch
priors' `sample` and `sample_digits` call this module too. The random numbers come from a
`RandomSource`: torch's own generator (`models.prior.TorchRandom`), or
`models.torch_rng.TorchCompatibleGenerator` without torch, which the tests hold to torch's draws
for the same seed. A prior travels without torch as an .npz (`save_npz`, `load_npz`).
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import numpy as np

NUM_CLASSES = 10
SCORE_ROWS = 512  # rows scored per step of `MixturePrior.sample_digits_in_steps` (~15 ms on a CPU)
LOG_2PI = math.log(2 * math.pi)


class PriorFileError(ValueError):
    """An exported prior that cannot be used (missing arrays, wrong shapes, unknown kind)."""


class RandomSource(Protocol):
    """The two draws the priors make: `torch.rand(float64)` and float32 `torch.randn`."""

    def rand_float64(self, *shape: int) -> np.ndarray: ...

    def randn_float32(self, *shape: int) -> np.ndarray: ...


@dataclass(frozen=True)
class StandardNormal:
    """N(0, I): the prior of a checkpoint without a learned one."""

    dim: int
    name: str = "standard"

    def sample(self, n: int, rng: RandomSource, temperature: float = 1.0) -> np.ndarray:
        z = rng.randn_float32(n, self.dim)
        return z if temperature == 1.0 else z * np.float32(temperature)

    def digits(self) -> list[int]:
        return []


@dataclass(frozen=True, eq=False)
class Mixture:
    """A Gaussian mixture's drawing steps: weights [K], means [K, D], scale_tril [K, D, D]
    (float32), labels [K] (int64) or None (`models.prior.GaussianMixture` holds the same)."""

    weights: np.ndarray
    means: np.ndarray
    scale_tril: np.ndarray
    labels: np.ndarray | None = None
    covariance: str = "full"

    def __post_init__(self) -> None:
        k, d = self.means.shape if self.means.ndim == 2 else (0, 0)
        if (
            k < 1
            or self.weights.shape != (k,)
            or self.scale_tril.shape != (k, d, d)
            or (self.labels is not None and self.labels.shape != (k,))
        ):
            raise PriorFileError(
                "mixture arrays must be weights [K], means [K, D], "
                "scale_tril [K, D, D] and labels [K]"
            )
        if not all(np.isfinite(a).all() for a in (self.weights, self.means, self.scale_tril)):
            raise PriorFileError("mixture holds NaN or infinite values")

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
        """log p(z), z [N, D] -> [N] (`models.prior.GaussianMixture.log_prob` in NumPy)."""
        return _logsumexp(self.component_log_prob(z))

    def class_log_posterior(self, z: np.ndarray) -> np.ndarray:
        """log p(digit | z) from the labelled components, z [N, D] -> [N, 10]."""
        if self.labels is None:
            raise PriorFileError("this mixture's components carry no digit labels")
        log_joint = self.component_log_prob(z)  # [N, K]
        out = np.full((len(z), NUM_CLASSES), -np.inf)
        for digit in range(NUM_CLASSES):
            mask = self.labels == digit
            if mask.any():
                out[:, digit] = _logsumexp(log_joint[:, mask])
        return out - _logsumexp(log_joint)[:, None]

    def digits(self) -> list[int]:
        return [] if self.labels is None else sorted({int(d) for d in self.labels})


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return safe + np.log(np.exp(a - safe[:, None]).sum(axis=1))


@dataclass(frozen=True, eq=False)
class MixturePrior:
    """A learned prior's drawing steps: plain draws, and chosen digits with the acceptance rule
    `models.prior.MixturePrior` describes."""

    mixture: Mixture
    classes: Mixture | None = None
    accept_threshold: float = 0.0
    max_rounds: int = 32
    config: dict[str, Any] = field(default_factory=dict)
    name: str = "mixture"
    draw_from: str = "mixture"

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def digits(self) -> list[int]:
        return [] if self.classes is None else self.classes.digits()

    def sample(self, n: int, rng: RandomSource, temperature: float = 1.0) -> np.ndarray:
        source = self.classes if self.draw_from == "classes" else self.mixture
        assert source is not None
        return source.sample(n, rng, temperature)

    def sample_digits(
        self, digits: np.ndarray | list[int], rng: RandomSource, temperature: float = 1.0
    ) -> np.ndarray:
        """One latent per entry of `digits`, each from that digit's components; draws the
        labelled mixture calls another digit are redrawn, as `models.prior` does."""
        return run_to_end(self.sample_digits_in_steps(digits, rng, temperature))

    def sample_digits_in_steps(
        self, digits: np.ndarray | list[int], rng: RandomSource, temperature: float = 1.0
    ) -> Generator[None, None, np.ndarray]:
        """`sample_digits` in steps of at most `SCORE_ROWS` rows scored (the costly part), for a
        caller that gives its thread to other work between steps; the very same draws."""
        if self.classes is None or self.classes.labels is None:
            raise PriorFileError("this prior has no per-digit mixtures")
        digits = np.asarray(digits, dtype=np.int64).reshape(-1)
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


def mixture_from_dict(data: dict[str, Any]) -> Mixture:
    """From `models.prior.GaussianMixture.to_dict()` (tensors) or an .npz's arrays."""
    labels = data.get("labels")
    return Mixture(
        np.asarray(data["weights"], dtype=np.float32),
        np.asarray(data["means"], dtype=np.float32),
        np.asarray(data["scale_tril"], dtype=np.float32),
        None if labels is None else np.asarray(labels, dtype=np.int64),
        str(data.get("covariance", "full")),
    )


def prior_from_dict(data: dict[str, Any]) -> MixturePrior:
    """From `models.prior.MixturePrior.to_dict()`: the arrays, the drawing rules, the config."""
    classes = data.get("classes")
    return MixturePrior(
        mixture=mixture_from_dict(data["mixture"]),
        classes=None if classes is None else mixture_from_dict(classes),
        accept_threshold=float(data.get("accept_threshold", 0.0)),
        max_rounds=int(data.get("max_rounds", 32)),
        config=dict(data.get("config") or {}),
        draw_from=str(data.get("draw_from", "mixture")),
    )


def save_npz(prior: Prior, path: Path | BinaryIO) -> None:
    """The prior as arrays plus one JSON string of its rules; `load_npz` reads it back."""
    if isinstance(prior, StandardNormal):
        np.savez(path, rules=json.dumps({"kind": "standard", "dim": prior.dim}))
        return
    arrays: dict[str, Any] = {}
    for part, mix in (("mixture", prior.mixture), ("classes", prior.classes)):
        if mix is None:
            continue
        arrays |= {f"{part}.weights": mix.weights, f"{part}.means": mix.means}
        arrays[f"{part}.scale_tril"] = mix.scale_tril
        if mix.labels is not None:
            arrays[f"{part}.labels"] = mix.labels
    rules = {
        "kind": "gaussian-mixture",
        "covariance": {"mixture": prior.mixture.covariance},
        "accept_threshold": prior.accept_threshold,
        "max_rounds": prior.max_rounds,
        "draw_from": prior.draw_from,
        "config": prior.config,
    }
    if prior.classes is not None:
        rules["covariance"]["classes"] = prior.classes.covariance
    np.savez(path, rules=json.dumps(rules), **arrays)


# What reading a damaged .npz raises: numpy's and zipfile's errors for a truncated or foreign
# file, and KeyError to RecursionError for arrays or rules that are missing or malformed.
NPZ_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    RecursionError,
    MemoryError,
    zipfile.BadZipFile,
    zlib.error,
)


def read_npz(path: Path | BinaryIO, error: type[Exception]) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON `rules` object and the arrays of a `.npz` written as `save_npz` writes (no
    pickles); rules that are not an object raise `error`, a damaged file `NPZ_READ_ERRORS`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    rules = json.loads(str(arrays.pop("rules")))
    if not isinstance(rules, dict):
        raise error("its rules are not a JSON object")
    return rules, arrays


def load_npz(path: Path | BinaryIO) -> Prior:
    """Reads what `save_npz` wrote; no pickles (`allow_pickle=False`). Anything else, damaged
    or not a prior, raises `PriorFileError`."""
    try:
        rules, arrays = read_npz(path, PriorFileError)
        if rules.get("kind") == "standard":
            return StandardNormal(int(rules["dim"]))
        if rules.get("kind") != "gaussian-mixture":
            raise PriorFileError(f"unknown prior kind {rules.get('kind')!r}")
        parts: dict[str, dict[str, Any]] = {}
        for key, value in arrays.items():
            part, name = key.split(".", 1)
            _check_dtype(key, value)
            parts.setdefault(part, {})[name] = value
        for part, covariance in rules["covariance"].items():
            parts[part]["covariance"] = covariance
        return prior_from_dict({**rules, **parts})
    except PriorFileError:
        raise
    except NPZ_READ_ERRORS as exc:
        name = getattr(path, "name", "the prior")
        raise PriorFileError(f"{name} is not an exported prior: {exc!r}") from exc


_KIND_NAMES = {"iu": "integers", "fiu": "real numbers"}


def _check_dtype(key: str, value: np.ndarray) -> None:
    """Labels are integers and the rest real numbers: a cast would silently change them."""
    kinds = "iu" if key.endswith(".labels") else "fiu"
    if value.dtype.kind not in kinds:
        raise PriorFileError(f"{key} holds {value.dtype} values, not {_KIND_NAMES[kinds]}")


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
