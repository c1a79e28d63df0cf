"""Is this a digit? A typicality score for every upload, from the VAE's posterior and the guide.

The raw -ELBO fails as an out-of-distribution score (blank images get a *better* -ELBO than
digits; docs/model-card.md has the table), so the score looks at where the encoder puts an upload
instead, and at what the digit guide (`models/digit_guide.py`) reads in it, each term measured
against real digits the model never trained on:

1. `prior_density`: -log p(mu) under the checkpoint's learned prior (the aggregate posterior of
   the training digits): a digit encodes where digits encode;
2. `posterior_density`: -log p(mu, logvar) under a per-digit Gaussian mixture fitted to the
   training digits' posteriors: a digit also gets a digit's posterior *width* in each direction;
3. `class_confidence`: 1 - max_c p(c | mu) from the prior's class-labelled mixture: a digit
   encodes near one digit class, not between them;
4. `guide_confidence`: 1 - the guide classifier's top probability on the upload itself: a digit
   is one digit to a network trained to tell them apart (it sees the filled silhouettes of
   Fashion-MNIST that encode where a thick 0 or 1 does).

Each term becomes an upper-tail p-value against the calibration digits (the fraction of them that
score at least as high), and Fisher's method combines them: T = -sum(log p_i). The served score
is Fisher's over all four (`GUIDED_TERMS`) where the service has the digit guide the
calibration was made with, and over the three latent ones (`LATENT_TERMS`) where it has none (or
another one): each has its own reference statistic in the calibration. The typicality of an
upload is the fraction of calibration digits whose T is larger, i.e. that look *less* digit-like
than it: a typical digit is near 0.5, and 0.01 means "less digit-like than 99 % of real digits".
An upload with no ink at all is 0.

Everything is computed from the encoder's `mu` and `logvar`, the input and the guide's
probabilities, in NumPy, so the torch and the torch-free runtimes share this code and the stored
calibration, and `/encode` pays for no decoder pass. The calibration is made by
`vae-calibrate-typicality` (`training/typicality.py`) and stored in the checkpoint (`typicality`
section) and in the export (`typicality.npz`); it names the prior it was made with
(`prior_fingerprint`), and a checkpoint whose prior was refitted since serves without a score. It
holds a few calibration digits with the guide's probabilities on them (`GuideCalibration`), so a
guide that reads them otherwise is not used for the score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

import numpy as np

from models.mixture_density import MixtureDensity
from models.prior import Mixture, MixturePrior, PriorError
from models.prior_npz import NPZ_READ_ERRORS, read_npz

FORMAT = "fisher-guided-v2"
LATENT_FORMAT = "fisher-latent-v1"  # before the guide's term: three rows, one reference; read too
TERMS = ("prior_density", "posterior_density", "class_confidence", "guide_confidence")
LATENT_TERMS = TERMS[:3]  # the score without a guide
GUIDED_TERMS = TERMS  # with one
NO_INK = 1.0 / 255.0  # an input whose brightest pixel is under one grey level is blank
DEFAULT_THRESHOLD = 0.01  # is_digit = typicality >= this: 1 % of real digits are flagged
CONFIDENT = 1e-9  # class_confidence under this is 0: one class holds all the mass
GUIDE_TOLERANCE = 1e-4  # on the probe digits: torch and ONNX Runtime agree within 1e-6
Classify = Callable[[np.ndarray], np.ndarray]  # images [N, 1, 32, 32] -> probabilities [N, 10]


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
class GuideCalibration:
    """The score with the digit guide: its reference statistic over `GUIDED_TERMS`, and a few
    calibration digits (`probe`, model inputs) with the guide's probabilities on them, which a
    guide must reproduce to be used (the same network, in torch or in its ONNX graph)."""

    reference: np.ndarray  # [n] sorted
    probe: np.ndarray  # [k, 1, 32, 32] float32
    probe_probabilities: np.ndarray  # [k, 10]

    def mismatch(self, classify: Classify) -> str | None:
        """Why `classify` is not the guide this was calibrated with, or None when it is."""
        try:
            got = np.asarray(classify(self.probe), np.float64)
        except Exception as exc:  # a guide that cannot run on digits is not this guide
            return f"the digit guide fails on the calibration's probe digits: {exc!r}"
        if got.shape != self.probe_probabilities.shape:
            return f"the digit guide answers {list(got.shape)} for the probe digits"
        error = float(np.abs(got - self.probe_probabilities).max())
        if not error <= GUIDE_TOLERANCE:
            return (
                f"the digit guide is not the one the calibration was made with (its "
                f"probabilities on the probe digits differ by {error:.2g})"
            )
        return None


@dataclass(frozen=True, eq=False)
class Typicality:
    """A calibration bound to the prior it was made with: `score` gives typicality in [0, 1].

    `guide` is the classifier the served score runs (`with_guide`), None for the latent terms
    alone; it is bound at load time, never stored."""

    prior: MixturePrior  # the checkpoint's own learned prior, with its class mixture
    joint: Mixture  # over [mu, logvar] (2 x latent dims), components labelled by digit
    term_references: np.ndarray  # [len(TERMS), n] (3 rows for LATENT_FORMAT): sorted per term
    reference: np.ndarray  # [n]: Fisher's statistic over LATENT_TERMS of the calibration digits
    guided: GuideCalibration | None = None  # None: calibrated without a guide
    info: dict[str, Any] = field(default_factory=dict)  # how it was made (digits, counts, date)
    guide: Classify | None = None

    def __post_init__(self) -> None:
        if self.prior.classes is None or self.prior.classes.labels is None:
            raise TypicalityError("the score needs a prior with a class-labelled mixture")
        dim = self.prior.dim
        if self.joint.dim != 2 * dim:
            raise TypicalityError(
                f"the posterior mixture is over {self.joint.dim} dims, not 2 x {dim} (mu, logvar)"
            )
        n = self.reference.shape[0] if self.reference.ndim == 1 else 0
        rows = len(TERMS) if self.guided is not None else len(LATENT_TERMS)
        if n < 1 or self.term_references.shape != (rows, n):
            raise TypicalityError(
                f"references must be [{rows}, n] and [n] with n >= 1, not "
                f"{list(self.term_references.shape)} and {list(self.reference.shape)}"
            )
        references = [self.term_references, self.reference]
        if self.guided is not None:
            g = self.guided
            if g.reference.shape != (n,) or g.probe.ndim != 4 or g.probe.shape[1:] != (1, 32, 32):
                raise TypicalityError("the guide's reference must be [n], its probe [k, 1, 32, 32]")
            if g.probe_probabilities.shape != (len(g.probe), 10):
                raise TypicalityError("the guide's probe probabilities must be [k, 10]")
            references.append(g.reference)
        for array in references:
            if not np.isfinite(array).all() or (np.diff(array, axis=-1) < 0).any():
                raise TypicalityError("references must be finite and sorted")
        if self.guide is not None and self.guided is None:
            raise TypicalityError("a calibration made without a guide cannot score with one")

    @property
    def calibration_size(self) -> int:
        return int(self.reference.shape[0])

    @property
    def served_terms(self) -> tuple[str, ...]:
        return GUIDED_TERMS if self.guide is not None else LATENT_TERMS

    def with_guide(self, classify: Classify) -> Typicality:
        """This calibration scoring with the guide `classify` too; `TypicalityError` (with the
        reason) when it was made without a guide or with another one."""
        if self.guided is None:
            raise TypicalityError("the calibration was made without a digit guide")
        reason = self.guided.mismatch(classify)
        if reason is not None:
            raise TypicalityError(reason)
        return dataclasses.replace(self, guide=classify)

    def terms(
        self,
        mu: np.ndarray,
        logvar: np.ndarray,
        guide_probabilities: np.ndarray | None = None,
        names: tuple[str, ...] = TERMS,
    ) -> np.ndarray:
        """The terms `names` [N, len(names)] (higher: less digit-like) of posteriors mu, logvar
        [N, D]; `guide_confidence` needs the guide's probabilities [N, 10] on the inputs.

        The prior's mixtures share one matrix product (both are over mu), the posterior mixture
        takes another, and a term not asked for costs nothing: a lone upload is a few dozen
        NumPy calls."""
        n = len(mu)
        out = np.empty((n, len(names)))
        if n == 0:
            return out
        wanted = set(names)
        values: dict[str, np.ndarray] = {}
        if wanted & {"prior_density", "class_confidence"}:
            with_classes = "class_confidence" in wanted
            density = self._prior_and_classes if with_classes else self._prior_only
            scaled = density.scaled(mu)
            values["prior_density"] = density.neg_log_density(scaled[0])
            if with_classes:
                per_class = scaled[1] @ self._class_labels  # [N, 10]
                total = per_class.sum(axis=1)
                share = np.divide(per_class.max(axis=1), total, out=np.zeros(n), where=total > 0)
                confusion = 1.0 - share
                confusion[confusion < CONFIDENT] = 0.0  # rounding noise, not evidence
                values["class_confidence"] = confusion
        if "posterior_density" in wanted:
            density = self._joint
            values["posterior_density"] = density.neg_log_density(density.scaled(mu, logvar)[0])
        if "guide_confidence" in wanted:
            if guide_probabilities is None:
                raise TypicalityError("guide_confidence needs the guide's probabilities")
            values["guide_confidence"] = 1.0 - np.asarray(guide_probabilities).max(axis=1)
        for i, name in enumerate(names):
            out[:, i] = values[name]
        if not np.isfinite(out).all():  # a NaN from a broken input is as far from a digit as any
            out = np.nan_to_num(out, nan=np.inf, posinf=np.inf, neginf=-np.inf)
        return out

    @cached_property
    def _prior_only(self) -> MixtureDensity:
        return MixtureDensity(self.prior.mixture)

    @cached_property
    def _prior_and_classes(self) -> MixtureDensity:
        """The prior's mixture and its class mixture, side by side (both are over mu)."""
        assert self.prior.classes is not None
        return MixtureDensity(self.prior.mixture, self.prior.classes)

    @cached_property
    def _class_labels(self) -> np.ndarray:
        assert self.prior.classes is not None and self.prior.classes.labels is not None
        return np.eye(10)[self.prior.classes.labels]  # [K, 10] one-hot

    @cached_property
    def _joint(self) -> MixtureDensity:
        return MixtureDensity(self.joint)

    def statistic(self, terms: np.ndarray, names: tuple[str, ...] = LATENT_TERMS) -> np.ndarray:
        """Fisher's -sum(log p_i) [N] of terms [N, len(names)], each p_i the share of calibration
        digits scoring at least as high on term i (plus one, so that it is never 0)."""
        neg_log_p = self._neg_log_p
        statistic = np.zeros(len(terms))
        for i, name in enumerate(names):
            statistic += neg_log_p[np.searchsorted(self._references[name], terms[:, i])]
        return statistic

    @cached_property
    def _neg_log_p(self) -> np.ndarray:
        """-log p for k calibration digits below a value: -log((n + 1 - k) / (n + 1))."""
        n = self.calibration_size
        return -np.log((n + 1.0 - np.arange(n + 1)) / (n + 1.0))

    @cached_property
    def _references(self) -> dict[str, np.ndarray]:
        return {name: row for name, row in zip(TERMS, self.term_references, strict=False)}

    def typicality_of(self, statistic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The share of calibration digits whose statistic is larger (less digit-like)."""
        n = self.calibration_size
        larger = n - np.searchsorted(reference, statistic, side="right")
        return larger / n

    def score(self, x: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
        """Typicality [N] (float64, k / n) in [0, 1] of inputs x [N, 1, 32, 32] with posteriors mu,
        logvar [N, D], over the guided terms where a guide is bound; 0 for an input with no ink."""
        names, probabilities = self.served_terms, None
        if self.guide is not None:
            assert self.guided is not None
            probabilities, reference = self.guide(x), self.guided.reference
        else:
            reference = self.reference
        terms = self.terms(mu, logvar, probabilities, names)
        typicality = self.typicality_of(self.statistic(terms, names), reference)
        blank = np.asarray(x).reshape(len(x), -1).max(axis=1, initial=0.0) < NO_INK
        typicality[blank] = 0.0
        return typicality

    def describe(self, threshold: float) -> dict[str, Any]:
        """For /model: what the score is, what it was calibrated on, and the threshold."""
        made = {k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool)}
        if "digit_guide" in made:
            made["calibrated_with_guide"] = made.pop("digit_guide")
        return {
            **made,
            "score": FORMAT if self.guided is not None else LATENT_FORMAT,
            "terms": list(self.served_terms),
            "digit_guide": self.guide is not None,  # whether the served score runs the guide
            "calibration_digits": self.calibration_size,
            "threshold": threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        """NumPy arrays and JSON-able values: `models.checkpoint` stores them as tensors."""
        joint = self.joint
        assert joint.labels is not None
        stored: dict[str, Any] = {
            "format": FORMAT if self.guided is not None else LATENT_FORMAT,
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
        if self.guided is not None:
            stored["guided"] = {
                "reference": self.guided.reference,
                "probe": self.guided.probe,
                "probe_probabilities": self.guided.probe_probabilities,
            }
        return stored

    @classmethod
    def from_dict(cls, data: Any, prior: Any) -> Typicality:
        """From `to_dict()` (arrays or CPU tensors), bound to `prior`; `TypicalityError` when the
        calibration is malformed, or was made with another prior."""
        formats = (FORMAT, LATENT_FORMAT)
        if not isinstance(data, dict) or data.get("format") not in formats:
            kind = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TypicalityError(
                f"unknown typicality format {kind!r}; this build reads {' and '.join(formats)}"
            )
        if not isinstance(prior, MixturePrior):
            raise TypicalityError("the calibration needs the learned prior it was made with")
        if data.get("prior_fingerprint") != prior_fingerprint(prior):
            raise TypicalityError(
                "the calibration was made with another prior (refitted since?): recalibrate "
                "with vae-calibrate-typicality"
            )
        joint = data.get("joint")
        guided = data.get("guided") if data["format"] == FORMAT else None
        try:
            if not isinstance(joint, dict):
                raise TypicalityError("the posterior mixture must be a dict of arrays")
            mixture = Mixture.from_dict(joint)
            if mixture.labels is None:
                raise TypicalityError("the posterior mixture's components need digit labels")
            term_references = np.asarray(data["term_references"], dtype=np.float64)
            reference = np.asarray(data["reference"], dtype=np.float64)
            if data["format"] == FORMAT:
                if not isinstance(guided, dict):
                    raise TypicalityError(f"{FORMAT} needs the guide's reference and probe")
                guided = GuideCalibration(
                    np.asarray(guided["reference"], dtype=np.float64),
                    np.asarray(guided["probe"], dtype=np.float32),
                    np.asarray(guided["probe_probabilities"], dtype=np.float64),
                )
        except TypicalityError:
            raise
        except (KeyError, TypeError, ValueError, PriorError) as exc:
            raise TypicalityError(f"malformed calibration: {exc}") from None
        info = data.get("info") or {}
        return cls(prior, mixture, term_references, reference, guided, dict(info))


def save_npz(typicality: Typicality, path: Any) -> None:
    """The calibration as arrays plus one JSON string of the rest; `load_npz` reads it back."""
    stored = typicality.to_dict()
    rules = {k: stored[k] for k in ("format", "prior_fingerprint", "info")}
    arrays = {
        f"{part}.{k}": v for part in ("joint", "guided") for k, v in stored.get(part, {}).items()
    }
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
        parts = {
            part: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{part}.")}
            for part in ("joint", "guided")
        }
        return Typicality.from_dict(
            {
                **rules,
                **{part: held for part, held in parts.items() if held},
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
