"""Is this a digit? A typicality score for every upload, from the VAE's own posterior.

The raw -ELBO fails as an out-of-distribution score (blank images get a *better* -ELBO than
digits; docs/model-card.md has the table), so the score looks at where the encoder puts an upload
instead, three ways, each measured against real digits the model never trained on:

1. `prior_density`: -log p(mu) under the checkpoint's learned prior (the aggregate posterior of
   the training digits): a digit encodes where digits encode;
2. `posterior_density`: -log p(mu, logvar) under a per-digit Gaussian mixture fitted to the
   training digits' posteriors: a digit also gets a digit's posterior *width* in each direction;
3. `class_confidence`: 1 - max_c p(c | mu) from the prior's class-labelled mixture: a digit
   encodes near one digit class, not between them.

Each term becomes an upper-tail p-value against the calibration digits (the fraction of them that
score at least as high), and Fisher's method combines them: T = -sum(log p_i). The typicality of
an upload is the fraction of calibration digits whose T is larger, i.e. that look *less*
digit-like than it: a typical digit is near 0.5, and 0.01 means "less digit-like than 99 % of
real digits". An upload with no ink at all is 0.

Everything is computed from the encoder's `mu` and `logvar` (and the input, for the ink check),
in NumPy, so the torch and the torch-free runtimes share this code and the stored calibration,
and `/encode` pays for no decoder pass. The calibration is made by `vae-calibrate-typicality`
(`training/typicality.py`) and stored in the checkpoint (`typicality` section) and in the export
(`typicality.npz`); it names the prior it was made with (`prior_fingerprint`), and a checkpoint
whose prior was refitted since serves without a score.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

import numpy as np

from models.prior import Mixture, MixturePrior, PriorError
from models.prior_npz import NPZ_READ_ERRORS, read_npz

FORMAT = "fisher-latent-v1"
TERMS = ("prior_density", "posterior_density", "class_confidence")
NO_INK = 1.0 / 255.0  # an input whose brightest pixel is under one grey level is blank
DEFAULT_THRESHOLD = 0.01  # is_digit = typicality >= this: 1 % of real digits are flagged


class TypicalityError(ValueError):
    """A stored calibration that cannot be used (wrong shapes, another prior, unknown format)."""


def prior_fingerprint(prior: MixturePrior) -> str:
    """sha256 over the prior's arrays (float32 and int64 bytes, in a fixed order): what a
    calibration was made with, the same from a checkpoint's tensors and an export's .npz."""
    digest = hashlib.sha256()
    for part in (prior.mixture, prior.classes):
        if part is None:
            digest.update(b"none")
            continue
        for array in (part.weights, part.means, part.scale_tril):
            digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
        if part.labels is not None:
            digest.update(np.ascontiguousarray(part.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Typicality:
    """A calibration bound to the prior it was made with: `score` gives typicality in [0, 1]."""

    prior: MixturePrior  # the checkpoint's own learned prior, with its class mixture
    joint: Mixture  # over [mu, logvar] (2 x latent dims), components labelled by digit
    term_references: np.ndarray  # [len(TERMS), n]: each term on the calibration digits, sorted
    reference: np.ndarray  # [n]: Fisher's statistic of the calibration digits, sorted
    info: dict[str, Any] = field(default_factory=dict)  # how it was made (digits, counts, date)

    def __post_init__(self) -> None:
        if self.prior.classes is None or self.prior.classes.labels is None:
            raise TypicalityError("the score needs a prior with a class-labelled mixture")
        dim = self.prior.dim
        if self.joint.dim != 2 * dim:
            raise TypicalityError(
                f"the posterior mixture is over {self.joint.dim} dims, not 2 x {dim} (mu, logvar)"
            )
        n = self.reference.shape[0] if self.reference.ndim == 1 else 0
        if n < 1 or self.term_references.shape != (len(TERMS), n):
            raise TypicalityError(
                f"references must be [{len(TERMS)}, n] and [n] with n >= 1, not "
                f"{list(self.term_references.shape)} and {list(self.reference.shape)}"
            )
        for array in (self.term_references, self.reference):
            if not np.isfinite(array).all() or (np.diff(array, axis=-1) < 0).any():
                raise TypicalityError("references must be finite and sorted")

    @property
    def calibration_size(self) -> int:
        return int(self.reference.shape[0])

    def terms(self, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
        """The three terms [N, 3] (higher: less digit-like) of posteriors mu, logvar [N, D].

        The prior's two mixtures share one matrix product (both are over mu), the posterior
        mixture takes another: a lone upload costs a few dozen NumPy calls, not hundreds."""
        mu = np.asarray(mu, np.float64)
        n = len(mu)
        if n == 0:
            return np.zeros((0, len(TERMS)))
        both = np.concatenate([mu, np.asarray(logvar, np.float64)], axis=1)
        on_mu, joint = self._on_mu, self._joint
        log_joint = on_mu.log_joint(mu)
        split = self._prior_components
        out = np.empty((n, len(TERMS)))
        out[:, 0] = -_logsumexp(log_joint[:, :split])
        out[:, 1] = -_logsumexp(joint.log_joint(both))
        classes = log_joint[:, split:]
        weights = np.exp(classes - classes.max(axis=1, keepdims=True))
        assert self._class_labels is not None
        out[:, 2] = 1.0 - (weights @ self._class_labels).max(axis=1) / weights.sum(axis=1)
        if not np.isfinite(out).all():  # a NaN from a broken input is as far from a digit as any
            out = np.nan_to_num(out, nan=np.inf, posinf=np.inf, neginf=-np.inf)
        return out

    @cached_property
    def _on_mu(self) -> _Density:
        """The prior's mixture and its class mixture, side by side (both are over mu)."""
        assert self.prior.classes is not None
        return _Density.side_by_side(_Density(self.prior.mixture), _Density(self.prior.classes))

    @cached_property
    def _prior_components(self) -> int:
        return self.prior.mixture.n_components

    @cached_property
    def _class_labels(self) -> np.ndarray:
        assert self.prior.classes is not None and self.prior.classes.labels is not None
        return np.eye(10)[self.prior.classes.labels]  # [K, 10] one-hot

    @cached_property
    def _joint(self) -> _Density:
        return _Density(self.joint)

    def statistic(self, terms: np.ndarray) -> np.ndarray:
        """Fisher's -sum(log p_i) [N] of terms [N, 3], each p_i the share of calibration digits
        scoring at least as high on term i (plus one, so that it is never 0)."""
        n = self.calibration_size
        below = np.stack(
            [np.searchsorted(self.term_references[i], terms[:, i]) for i in range(len(TERMS))]
        )
        return -np.log((n + 1.0 - below) / (n + 1.0)).sum(axis=0)

    def typicality_of(self, statistic: np.ndarray) -> np.ndarray:
        """The share of calibration digits whose statistic is larger (less digit-like)."""
        n = self.calibration_size
        larger = n - np.searchsorted(self.reference, statistic, side="right")
        return larger / n

    def score(self, x: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
        """Typicality [N] (float64, k / n) in [0, 1] of inputs x [N, 1, 32, 32] with posteriors mu,
        logvar [N, D]; 0 for an input with no ink."""
        typicality = self.typicality_of(self.statistic(self.terms(mu, logvar)))
        blank = np.asarray(x).reshape(len(x), -1).max(axis=1, initial=0.0) < NO_INK
        typicality[blank] = 0.0
        return typicality

    def describe(self, threshold: float) -> dict[str, Any]:
        """For /model: what the score is, what it was calibrated on, and the threshold."""
        return {
            "score": FORMAT,
            "terms": list(TERMS),
            "calibration_digits": self.calibration_size,
            "threshold": threshold,
            **{k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool)},
        }

    def to_dict(self) -> dict[str, Any]:
        """NumPy arrays and JSON-able values: `models.checkpoint` stores them as tensors."""
        joint = self.joint
        assert joint.labels is not None
        return {
            "format": FORMAT,
            "prior_fingerprint": prior_fingerprint(self.prior),
            "joint": {
                "weights": joint.weights,
                "means": joint.means,
                "scale_tril": joint.scale_tril,
                "labels": joint.labels,
            },
            "term_references": self.term_references,
            "reference": self.reference,
            "info": json.loads(json.dumps(self.info, default=str)),
        }

    @classmethod
    def from_dict(cls, data: Any, prior: Any) -> Typicality:
        """From `to_dict()` (arrays or CPU tensors), bound to `prior`; `TypicalityError` when the
        calibration is malformed, or was made with another prior."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            kind = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TypicalityError(f"unknown typicality format {kind!r}; this build reads {FORMAT}")
        if not isinstance(prior, MixturePrior):
            raise TypicalityError("the calibration needs the learned prior it was made with")
        if data.get("prior_fingerprint") != prior_fingerprint(prior):
            raise TypicalityError(
                "the calibration was made with another prior (refitted since?): recalibrate "
                "with vae-calibrate-typicality"
            )
        joint = data.get("joint")
        try:
            if not isinstance(joint, dict):
                raise TypicalityError("the posterior mixture must be a dict of arrays")
            mixture = Mixture.from_dict(joint)
            if mixture.labels is None:
                raise TypicalityError("the posterior mixture's components need digit labels")
            term_references = np.asarray(data["term_references"], dtype=np.float64)
            reference = np.asarray(data["reference"], dtype=np.float64)
        except TypicalityError:
            raise
        except (KeyError, TypeError, ValueError, PriorError) as exc:
            raise TypicalityError(f"malformed calibration: {exc}") from None
        info = data.get("info") or {}
        return cls(prior, mixture, term_references, reference, dict(info))


class _Density:
    """Gaussian mixture components' log densities as one matrix product: the whitening
    A_k (z - m_k) of every component k (A_k the inverse Cholesky factor) is
    z @ [A_1^T ... A_K^T] - [m_1 A_1^T ... m_K A_K^T]. The same numbers as
    `models.prior.Mixture.component_log_prob` (within float64 rounding), at a fraction of the
    cost per upload: one BLAS call instead of one per component (issue 30's 5 % budget)."""

    def __init__(self, mixture: Mixture | None, parts: tuple | None = None) -> None:
        if parts is not None:
            self.dim, self.components, self.project, self.shift, self.offset = parts
            return
        assert mixture is not None
        k, d = mixture.means.shape
        tril = mixture.scale_tril.astype(np.float64)
        inverse_t = np.linalg.inv(tril).transpose(0, 2, 1)  # [K, D, D]: A_k^T
        self.dim, self.components = d, k
        self.project = np.ascontiguousarray(inverse_t.transpose(1, 0, 2).reshape(d, k * d))
        self.shift = np.einsum("kd,kde->ke", mixture.means.astype(np.float64), inverse_t).ravel()
        half_log_det = np.log(np.diagonal(tril, axis1=1, axis2=2)).sum(-1)
        with np.errstate(divide="ignore"):
            log_weights = np.log(mixture.weights.astype(np.float64))
        self.offset = log_weights - half_log_det - 0.5 * d * math.log(2 * math.pi)

    @classmethod
    def side_by_side(cls, first: _Density, second: _Density) -> _Density:
        """Two mixtures over the same z, their components' columns one after the other."""
        assert first.dim == second.dim
        return cls(
            None,
            (
                first.dim,
                first.components + second.components,
                np.ascontiguousarray(np.concatenate([first.project, second.project], axis=1)),
                np.concatenate([first.shift, second.shift]),
                np.concatenate([first.offset, second.offset]),
            ),
        )

    def log_joint(self, z: np.ndarray) -> np.ndarray:
        """log w_k + log N(z; m_k, L_k L_k^T), [N, K]."""
        white = z @ self.project
        white -= self.shift
        np.square(white, out=white)
        return self.offset - 0.5 * white.reshape(len(z), self.components, self.dim).sum(axis=2)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(a - top).sum(axis=1))


def save_npz(typicality: Typicality, path: Any) -> None:
    """The calibration as arrays plus one JSON string of the rest; `load_npz` reads it back."""
    stored = typicality.to_dict()
    rules = {k: stored[k] for k in ("format", "prior_fingerprint", "info")}
    arrays = {f"joint.{k}": v for k, v in stored["joint"].items()}
    np.savez(
        path,
        rules=json.dumps(rules),
        term_references=stored["term_references"],
        reference=stored["reference"],
        **arrays,
    )


def load_npz(path: Any | BinaryIO, prior: Any) -> Typicality:
    """Reads what `save_npz` wrote (no pickles), bound to `prior`; anything damaged, or made
    with another prior, raises `TypicalityError`."""
    try:
        rules, arrays = read_npz(path, TypicalityError)
        for key, value in arrays.items():
            kinds = "iu" if key.endswith(".labels") else "f"
            if value.dtype.kind not in kinds:
                raise TypicalityError(f"{key} holds {value.dtype} values")
        joint = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("joint.")}
        return Typicality.from_dict(
            {
                **rules,
                "joint": joint,
                "term_references": arrays["term_references"],
                "reference": arrays["reference"],
            },
            prior,
        )
    except TypicalityError:
        raise
    except NPZ_READ_ERRORS as exc:
        name = getattr(path, "name", "the calibration")
        raise TypicalityError(f"{name} is not an exported calibration: {exc!r}") from exc


def is_digit(typicality: np.ndarray, threshold: float) -> np.ndarray:
    """`typicality >= threshold`, as bools [N]."""
    return np.asarray(typicality) >= threshold


def header_value(typicality: float) -> str:
    """`X-Typicality`: four decimals (the calibration has thousands of digits, not millions)."""
    return f"{typicality:.4f}" if math.isfinite(typicality) else "0.0000"
