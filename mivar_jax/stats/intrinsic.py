"""Intrinsic variability of single-input scores, per edge (or node): how much the causal effect
itself changes from one input to the next, before any estimator noise.

For per-input scores s [N, E]:
- ``mean``, ``std`` (ddof = 1), ``cv`` = std / |mean| (inf where the mean is 0);
- ``snr``: the signal-to-noise ratio |mean| / std (inf where std = 0 < |mean|, 0 where both are
  0). Prefer it to the CV for summaries: the CV explodes as the mean nears 0, so never average
  CVs across edges (a median of SNRs is well behaved);
- ``sign_agreement``: the share of inputs whose score has the sign of the mean, in 0 … 1 (a
  zero score counts as disagreeing; 0 for a zero mean);
- ``quantiles`` at ``QUANTILES`` (linear interpolation, numpy's default);
- ``n_needed``: inputs the mean needs for a 95% normal interval to exclude zero,
  ⌈(1.96 · std / |mean|)²⌉ (inf where the mean is 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from mivar_jax._shards import column_blocks
from mivar_jax.stats._checks import as_scores, to_json_dict

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
Z_95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class EdgeVariability:
    mean: np.ndarray
    std: np.ndarray
    cv: np.ndarray
    snr: np.ndarray
    sign_agreement: np.ndarray
    quantiles: np.ndarray  # [len(QUANTILES), E]
    n_needed: np.ndarray
    n_inputs: int

    def to_json(self) -> dict:
        return to_json_dict(self, extra={"quantile_levels": list(QUANTILES)})


@jax.jit
def _variability(s_NxE: Float[Array, "N E"]):
    mean = s_NxE.mean(0)
    std = s_NxE.std(0, ddof=1)
    cv = jnp.where(mean != 0, std / jnp.abs(mean), jnp.inf)
    snr = jnp.where(std > 0, jnp.abs(mean) / jnp.where(std > 0, std, 1.0), jnp.where(mean != 0, jnp.inf, 0.0))
    agree = (jnp.sign(s_NxE) == jnp.sign(mean)) & (mean != 0)
    q = jnp.quantile(s_NxE, jnp.asarray(QUANTILES), axis=0)
    needed = jnp.where(mean != 0, jnp.ceil((Z_95 * std / jnp.abs(mean)) ** 2), jnp.inf)
    return mean, std, cv, snr, agree.mean(0), q, needed


def edge_variability(scores) -> EdgeVariability:
    """Per-edge statistics of per-input scores (a Scores or an [N, E] array, N ≥ 2); scores on disk
    are read a column block at a time."""
    s = as_scores(scores, min_inputs=2)
    parts = [[np.asarray(a) for a in _variability(jnp.asarray(block))] for _, block in column_blocks(s)]
    stats = [np.concatenate(column, axis=-1) for column in zip(*parts, strict=True)]
    return EdgeVariability(*stats, n_inputs=int(s.shape[0]))
