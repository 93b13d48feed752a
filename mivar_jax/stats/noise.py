"""Estimator noise: an approximate estimator's per-input scores a [N, E] against exact ones x.

Per edge: ``bias`` = mean(a − x), ``rmse`` = √mean((a − x)²), and the split of the variance of
a across inputs (ddof = 1 throughout), Var(a) = Var(x) + Var(a − x) + 2 Cov(x, a − x):
``intrinsic`` = Var(x) (the effect's own variation), ``noise`` = Var(a − x) (the estimator's
error) and ``covariance`` = Cov(x, a − x) (reported as is, i.e. once; the identity uses 2×).
Per input: ``spearman`` and ``kendall`` (τ-b) rank correlations across edges (ties get average
ranks; Kendall is computed on the host with scipy, O(E log E) per input).
``topn_jaccard``: for each n, the Jaccard index of the top-n circuits (by |mean|, pruned when a
Graph is given) of the two estimators.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mivar_jax.circuits.pruning import prune
from mivar_jax.circuits.selection import topn_masks
from mivar_jax.stats._checks import as_scores, to_json_dict


@dataclasses.dataclass(frozen=True)
class EstimatorNoise:
    bias: np.ndarray
    rmse: np.ndarray
    intrinsic: np.ndarray
    noise: np.ndarray
    covariance: np.ndarray
    spearman: np.ndarray
    kendall: np.ndarray
    topn_jaccard: dict[int, float]

    def summary(self) -> dict:
        return {
            "mean_abs_bias": float(np.abs(self.bias).mean()),
            "mean_rmse": float(self.rmse.mean()),
            "intrinsic_variance": float(self.intrinsic.sum()),
            "noise_variance": float(self.noise.sum()),
            "covariance": float(self.covariance.sum()),
            "spearman_median": float(np.median(self.spearman)),
            "kendall_median": float(np.median(self.kendall)),
            "topn_jaccard": {str(k): v for k, v in self.topn_jaccard.items()},
        }

    def to_json(self) -> dict:
        return to_json_dict(self, extra={"topn_jaccard": {str(k): v for k, v in self.topn_jaccard.items()}})


def average_ranks(x_E: jax.Array) -> jax.Array:
    """Ranks 0…E−1 of a vector, ties sharing their average rank (scipy's ``rankdata`` − 1)."""
    order = jnp.argsort(x_E)
    xs = x_E[order]
    lo = jnp.searchsorted(xs, xs, side="left")
    hi = jnp.searchsorted(xs, xs, side="right")
    return jnp.zeros_like(x_E, jnp.float32).at[order].set((lo + hi - 1) / 2)


@jax.jit
def _spearman(a_NxE, x_NxE):
    def one(a, x):
        ra, rx = average_ranks(a), average_ranks(x)
        ra, rx = ra - ra.mean(), rx - rx.mean()
        return (ra * rx).sum() / jnp.sqrt((ra * ra).sum() * (rx * rx).sum())

    return jax.vmap(one)(a_NxE, x_NxE)


@jax.jit
def _moments(a_NxE, x_NxE):
    d = a_NxE - x_NxE
    n = a_NxE.shape[0]
    dc, xc = d - d.mean(0), x_NxE - x_NxE.mean(0)
    return (
        d.mean(0),
        jnp.sqrt((d * d).mean(0)),
        (xc * xc).sum(0) / (n - 1),
        (dc * dc).sum(0) / (n - 1),
        (xc * dc).sum(0) / (n - 1),
    )


def estimator_noise(approx, exact, n_edges=(), graph=None) -> EstimatorNoise:
    """Noise of ``approx`` against ``exact`` (Scores or [N, E] arrays of the same inputs and edges);
    ``n_edges``: circuit sizes for ``topn_jaccard``; ``graph`` prunes those circuits."""
    from scipy.stats import kendalltau

    a = as_scores(approx, min_inputs=2, name="approx")
    x = as_scores(exact, min_inputs=2, name="exact")
    if a.shape != x.shape:
        raise ValueError(f"approx and exact scores must have the same shape, got {a.shape} and {x.shape}")
    bias, rmse, intrinsic, noise, cov = (np.asarray(v) for v in _moments(jnp.asarray(a), jnp.asarray(x)))
    spearman = np.asarray(_spearman(jnp.asarray(a), jnp.asarray(x)))
    kendall = np.array([kendalltau(ai, xi).statistic for ai, xi in zip(a, x, strict=True)], np.float32)
    jac = {}
    means = jnp.stack([jnp.asarray(a.mean(0)), jnp.asarray(x.mean(0))])
    for n in np.atleast_1d(np.asarray(n_edges, np.int64)).tolist():
        if not 1 <= n <= a.shape[1]:
            raise ValueError(f"n_edges must be in [1, {a.shape[1]}], got {n}")
        masks = topn_masks(means, int(n))
        if graph is not None:
            masks = prune(graph, masks)[0]
        m = np.asarray(masks)
        union = (m[0] | m[1]).sum()
        jac[int(n)] = float((m[0] & m[1]).sum() / union) if union else 1.0
    return EstimatorNoise(bias, rmse, intrinsic, noise, cov, spearman, kendall, jac)
