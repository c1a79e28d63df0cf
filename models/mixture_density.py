"""Gaussian mixtures' component densities as one matrix product, for the typicality score.

`models.prior.Mixture.component_log_prob` loops over components; a lone upload cannot afford
that on every request (issue 30's 5 % budget). Whitening every component k at once,
A_k (z - m_k) with A_k the inverse Cholesky factor, is [z, 1] @ [A_1^T ... A_K^T; -m_1 A_1^T ...
-m_K A_K^T]: one BLAS call, in float32 (the score ranks against thousands of calibration digits,
so float64 buys nothing there and costs twice the memory traffic). A lone upload is a dozen
NumPy calls, since at one row their fixed cost, not the arithmetic, is the price.
"""

from __future__ import annotations

import math

import numpy as np

from models.prior import Mixture

TINY = np.finfo(np.float64).tiny


class MixtureDensity:
    """w_k N(z; m_k, L_k L_k^T) for every component k of one or more mixtures over the same z,
    their components side by side, each mixture scaled by its highest possible value."""

    def __init__(self, *mixtures: Mixture) -> None:
        dims = {m.means.shape[1] for m in mixtures}
        if len(dims) != 1:
            raise ValueError(f"mixtures over different dimensions: {sorted(dims)}")
        (self.dim,) = dims
        projects, shifts, offsets = [], [], []
        for mixture in mixtures:
            k, d = mixture.means.shape
            tril = mixture.scale_tril.astype(np.float64)
            inverse_t = np.linalg.inv(tril).transpose(0, 2, 1)  # [K, D, D]: A_k^T
            projects.append(inverse_t.transpose(1, 0, 2).reshape(d, k * d))
            means = mixture.means.astype(np.float64)
            shifts.append(np.einsum("kd,kde->ke", means, inverse_t).ravel())
            half_log_det = np.log(np.diagonal(tril, axis1=1, axis2=2)).sum(-1)
            with np.errstate(divide="ignore"):
                log_weights = np.log(mixture.weights.astype(np.float64))
            offsets.append(log_weights - half_log_det - 0.5 * d * math.log(2 * math.pi))
        self.components = sum(m.n_components for m in mixtures)
        self.splits = np.cumsum([m.n_components for m in mixtures])[:-1]
        # log w_k + log N at z = m_k, the most any z can reach: each mixture's largest is its top
        self.tops = np.array([o.max() for o in offsets])
        tops = np.repeat(self.tops, [m.n_components for m in mixtures])
        self.offset = np.concatenate(offsets) - tops  # float64: exp of it must not underflow early
        self.project = np.ascontiguousarray(
            np.vstack([np.concatenate(projects, axis=1), -np.concatenate(shifts)[None]]),
            dtype=np.float32,
        )

    def scaled(self, *parts: np.ndarray) -> list[np.ndarray]:
        """Per mixture, exp(log w_k + log N(z; m_k, S_k) - top) [N, K_mixture] in float64, for
        z the columns of `parts` side by side: never above 1, so summing cannot overflow."""
        n = len(parts[0])
        z = np.concatenate([*parts, np.ones((n, 1), np.float32)], axis=1, dtype=np.float32)
        white = z @ self.project
        np.square(white, out=white)
        scaled = np.exp(self.offset - 0.5 * white.reshape(n, self.components, self.dim).sum(2))
        return np.split(scaled, self.splits, axis=1) if len(self.splits) else [scaled]

    def neg_log_density(self, scaled: np.ndarray, mixture: int = 0) -> np.ndarray:
        """-log p(z) [N] of one mixture from its `scaled` components. Where every component
        underflows (z over ~700 nats from any of them) it reads 708 - top: far past every digit,
        so its rank against the calibration is the same."""
        return -(np.log(np.maximum(scaled.sum(axis=1), TINY)) + self.tops[mixture])
