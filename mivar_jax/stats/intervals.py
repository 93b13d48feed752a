"""Bootstrap confidence intervals (two-sided, level ``confidence``), vectorised over statistics.

- percentile: the α and 1 − α quantiles of the bootstrap values θ*_b, α = (1 − confidence)/2
  (linear interpolation between order statistics, as numpy and scipy do).
- BCa (Efron & Tibshirani 1993, §14.3): quantiles at α₁ = Φ(z₀ + (z₀ + z_α)/(1 − a(z₀ + z_α)))
  and α₂ likewise with z_{1−α}, where z₀ = Φ⁻¹(share of θ*_b below θ̂, ties counted half) and the
  acceleration a = Σ d_i³ / (6 (Σ d_i²)^{3/2}) with d_i = mean(θ_(·)) − θ_(i) from the jackknife
  values θ_(i). Same definitions as ``scipy.stats.bootstrap``. Degenerate cases: constant θ*_b give
  that constant (both levels ½); θ̂ outside every θ*_b (z₀ = ±∞) and an undefined acceleration
  (constant jackknife values) give NaN, as scipy does (it also warns there).

Shapes (docs/architecture.md): B bootstrap replicates, J jackknife values, M statistics (columns).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri
from jaxtyping import Array, ArrayLike, Float

Confidence = float | Float[Array, ""]  # a traced scalar inside jit


def percentile_levels(confidence: Confidence, k: int) -> jax.Array:
    alpha = (1 - confidence) / 2
    return jnp.broadcast_to(jnp.asarray([[alpha], [1 - alpha]], jnp.float32), (2, k))


def bca_levels(
    theta_star_BxM: Float[ArrayLike, "B M"],
    theta_hat_M: Float[ArrayLike, " M"],
    jackknife_JxM: Float[ArrayLike, "J M"],
    confidence: Confidence = 0.95,
) -> Float[Array, "2 M"]:
    """The BCa quantile levels (α₁, α₂) of every statistic."""
    theta_star_BxM, theta_hat_M, jackknife_JxM = map(jnp.asarray, (theta_star_BxM, theta_hat_M, jackknife_JxM))
    alpha = (1 - confidence) / 2
    below = (theta_star_BxM < theta_hat_M).sum(0) + (theta_star_BxM <= theta_hat_M).sum(0)
    z0 = ndtri(below / (2 * theta_star_BxM.shape[0]))
    d = jackknife_JxM.mean(0) - jackknife_JxM
    accel = (d**3).sum(0) / (6 * ((d**2).sum(0)) ** 1.5)
    z = ndtri(jnp.asarray([alpha, 1 - alpha]))[:, None]
    levels = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    levels = jnp.where(jnp.isinf(z0), jnp.nan, levels)  # θ̂ outside every replicate: undefined
    constant = theta_star_BxM.min(0) == theta_star_BxM.max(0)
    return jnp.where(constant, 0.5, levels)  # constant replicates: a degenerate interval


def _interpolate(order_stat, levels, n: int) -> jax.Array:
    """Linear interpolation between order statistics (numpy's default quantile method);
    ``order_stat(i)`` returns the i-th smallest value of each column for an index array [levels, M]."""
    pos = jnp.nan_to_num(levels) * (n - 1)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 1)
    hi = jnp.minimum(lo + 1, n - 1)
    a, b = order_stat(lo), order_stat(hi)
    return jnp.where(jnp.isnan(levels), jnp.nan, a + (pos - lo) * (b - a))  # NaN level: NaN


def column_quantiles(
    values_BxM: Float[ArrayLike, "B M"], levels: Float[ArrayLike, "levels M"]
) -> Float[Array, "levels M"]:
    """Per-column quantiles at per-column levels (jit-able; sorts every column); ``levels`` [2·pairs, M]
    may stack several level pairs."""
    srt = jnp.sort(values_BxM, axis=0)
    return _interpolate(lambda i: jnp.take_along_axis(srt, i, axis=0), levels, values_BxM.shape[0])


def column_quantiles_tails(values_BxM, levels) -> jax.Array:
    """``column_quantiles`` for many columns, from the two tails only: the k smallest and k
    largest values of each column (``lax.top_k``; k the smallest power of two that covers every
    level, found with one host read) instead of a full sort, which XLA's CPU sort makes slow.
    ``levels`` [2·pairs, M] may stack several level pairs (e.g. percentile and BCa: one pass for both)."""
    n = values_BxM.shape[0]
    lo = np.floor(np.nan_to_num(np.asarray(levels, np.float64)) * (n - 1))
    need = int(np.minimum(lo + 2, n - lo + 1).max())  # each level from its nearer tail (NaN: any)
    k = 1 << max(need - 1, 1).bit_length()
    if 2 * k >= n:
        return column_quantiles(values_BxM, levels)
    return _tails(values_BxM, jnp.asarray(levels), k)


@functools.partial(jax.jit, static_argnums=2)
def _tails(values_BxM, levels, k: int):
    n = values_BxM.shape[0]
    low_Mxk = -jax.lax.top_k(-values_BxM.T, k)[0]  # ascending: order statistics 0 … k−1
    high_Mxk = jax.lax.top_k(values_BxM.T, k)[0]  # descending: order statistics n−1 … n−k
    cols = jnp.arange(values_BxM.shape[1])

    def order_stat(i_levelsxM):
        from_low = low_Mxk[cols, jnp.minimum(i_levelsxM, k - 1)]
        from_high = high_Mxk[cols, jnp.clip(n - 1 - i_levelsxM, 0, k - 1)]
        return jnp.where(i_levelsxM < k, from_low, from_high)

    return _interpolate(order_stat, levels, n)


def percentile_interval(theta_star_BxM: Float[ArrayLike, "B M"], confidence: Confidence = 0.95) -> Float[Array, "2 M"]:
    return column_quantiles(theta_star_BxM, percentile_levels(confidence, theta_star_BxM.shape[1]))


def bca_interval(
    theta_star_BxM: Float[ArrayLike, "B M"],
    theta_hat_M: Float[ArrayLike, " M"],
    jackknife_JxM: Float[ArrayLike, "J M"],
    confidence: Confidence = 0.95,
) -> Float[Array, "2 M"]:
    return column_quantiles(theta_star_BxM, bca_levels(theta_star_BxM, theta_hat_M, jackknife_JxM, confidence))
