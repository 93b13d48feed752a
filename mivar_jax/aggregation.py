"""Aggregation of per-input scores over inputs: pure, jit-able, optionally weighted. The one entry
point is ``aggregate`` (``mv.aggregate``), for a Scores or an [N, E] array.

``weights`` [N] (e.g. bootstrap multinomial counts) make every aggregation that of the weighted
multiset: integer weights give exactly the statistic of the resampled dataset.

- ``mean`` (the reference library's): Σ w s / Σ w
- ``median``: the weighted median; for integer weights it equals ``np.median`` of the multiset
  (the two middle values averaged when the total weight is even)
- ``mean-abs``: Σ w |s| / Σ w
- ``abs-mean``: |Σ w s / Σ w|
- ``sum``: Σ w s

Exact sums. With no weights or non-negative integer weights, Σ w s is computed exactly on a
fixed-point grid: each edge's scores are rounded to multiples of 2^-24 of the power of two above
its largest |score| (so no more than float32 rounding of that score), split into integer limbs of
b bits (b = 24 − ⌈log₂(Σw + 1)⌉), and each limb's weighted sum is an integer below 2^24, exact in
float32 whatever the summation order. The result is then one fixed sequence of float32 operations:
the same bits for any batch, chunk or device count, on any CPU or accelerator, and for any order of
the inputs. Non-integer weights give a plain float32 weighted sum.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from mivar_jax._shards import ScoreShards
from mivar_jax.scores import Scores

AGGREGATIONS = ("mean", "median", "mean-abs", "abs-mean", "sum")
GRID_BITS = 24  # the fixed-point grid: 2^-24 of the power of two above each edge's largest |score|


def check_aggregation(how: str) -> None:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose from {list(AGGREGATIONS)}")


def aggregate(
    scores: Scores | Float[ArrayLike, "N E"], how: str = "mean", weights_N: Real[ArrayLike, " N"] | None = None
) -> Float[Array, " E"]:
    """Per-input scores (a Scores, or an array [N, E]) aggregated over inputs into a jax array [E]
    (``mean`` | ``median`` | ``mean-abs`` | ``abs-mean`` | ``sum``; optional weights [N]; exact
    sums: module docstring). Scores on disk (``ScoreShards``) are aggregated a column block at a
    time: every aggregation is per edge, so the result is the same."""
    check_aggregation(how)
    per_input = scores.per_input if isinstance(scores, Scores) else scores
    if isinstance(per_input, ScoreShards):
        return jnp.concatenate([_aggregate(block, how, weights_N) for _, block in per_input.column_blocks()])
    return _aggregate(per_input, how, weights_N)


def _aggregate(scores_NxE, how: str, weights_N) -> jax.Array:
    s = jnp.asarray(scores_NxE, jnp.float32)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"per-input scores must be a non-empty [N, E] array, got shape {s.shape}")
    n = s.shape[0]
    if weights_N is None:
        return _aggregate_counts_jit(s, how, jnp.ones(n, jnp.float32), n)
    if isinstance(weights_N, jax.core.Tracer):  # no host check possible: a plain weighted sum
        return _aggregate_float(s, how, jnp.asarray(weights_N, jnp.float32))
    w = np.asarray(weights_N, np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {w.shape}")
    if np.all(w >= 0) and np.all(w == np.round(w)) and w.sum() < 2**23:
        return _aggregate_counts_jit(s, how, jnp.asarray(w, jnp.float32), int(w.sum()))
    return _aggregate_float(s, how, jnp.asarray(w, jnp.float32))


class FixedPoint(NamedTuple):
    """Scores [N, E] on the fixed-point grid, as integer limbs side by side [N, limbs·E] (low limbs
    in [0, 2^bits), the top one signed), and each edge's scale 2^e [E] (|s| ≤ 2^e): s ≈ q·2^-24·2^e."""

    limbs: jax.Array
    scale: jax.Array


def _limb_bits(max_total: int) -> tuple[int, int]:
    """(bits per limb, limbs) so that every limb's sum over weights totalling ≤ ``max_total`` is
    an integer below 2^24."""
    bits = GRID_BITS - max(1, math.ceil(math.log2(max_total + 1)))
    if bits < 1:
        raise ValueError(f"exact sums support weights totalling < 2^23, got a bound of {max_total}")
    return bits, -(-GRID_BITS // bits)


def fixed_point(s_NxE: Float[Array, "N E"], how: str, max_total: int) -> FixedPoint | None:
    """What ``aggregate_counts`` sums for ``how``: s (|s| for ``mean-abs``) on the grid; None for
    the median (exact without it). Compute it once when aggregating the same scores many times."""
    if how == "median":
        return None
    v = jnp.abs(s_NxE) if how == "mean-abs" else s_NxE
    bits, n_limbs = _limb_bits(max_total)
    _, e_E = jnp.frexp(jnp.max(jnp.abs(v), axis=0))  # |v| ≤ 2^e
    # q = v·2^(24 − e) in three power-of-two factors, each a normal float32: exact
    half = e_E // 2
    inv_a, inv_b = jnp.ldexp(jnp.ones_like(v[0]), -half), jnp.ldexp(jnp.ones_like(v[0]), half - e_E)
    rest = jnp.round(v * inv_a * inv_b * 2.0**GRID_BITS)  # integers, |q| ≤ 2^24
    limbs = []
    for _ in range(n_limbs - 1):  # low limbs in [0, 2^bits), the top one signed
        high = jnp.floor(rest * 2.0**-bits)
        limbs.append(rest - high * 2.0**bits)
        rest = high
    limbs.append(rest)
    return FixedPoint(jnp.concatenate(limbs, axis=1), jnp.ldexp(jnp.ones_like(v[0]), e_E))


def aggregate_counts(
    s_NxE: Float[Array, "N E"], how: str, counts_N: Float[Array, " N"], max_total: int, fixed: FixedPoint | None = None
) -> Float[Array, " E"]:
    """``aggregate`` for non-negative integer weights (``counts``, e.g. bootstrap counts) whose total
    is at most ``max_total`` (a static bound): sums exact on the fixed-point grid. Jit-able, vmap-able
    over ``counts``; ``fixed`` = ``fixed_point(s, how, max_total)`` if already computed."""
    if how == "median":
        return _weighted_median(s_NxE, counts_N)
    fixed = fixed_point(s_NxE, how, max_total) if fixed is None else fixed
    bits, n_limbs = _limb_bits(max_total)
    # every limb's weighted sum is an integer below 2^24: exact in any summation order
    sums = jnp.dot(counts_N, fixed.limbs, precision=jax.lax.Precision.HIGHEST).reshape(n_limbs, -1)
    acc = sums[-1]
    for j in range(n_limbs - 2, -1, -1):  # one fixed sequence of float32 operations
        acc = acc * 2.0**bits + sums[j]
    return _finish(acc * 2.0**-GRID_BITS * fixed.scale, how, counts_N)  # both factors powers of two: exact


_aggregate_counts_jit = jax.jit(aggregate_counts, static_argnums=(1, 3))
fixed_point_jit = jax.jit(fixed_point, static_argnums=(1, 2))


def _aggregate_float(s: jax.Array, how: str, w: jax.Array) -> jax.Array:
    if how == "median":
        return _weighted_median(s, w)
    return _finish(w @ (jnp.abs(s) if how == "mean-abs" else s), how, w)


def _finish(total_E: jax.Array, how: str, w_N: jax.Array) -> jax.Array:
    """The aggregate from the weighted sum Σ w s (Σ w |s| for ``mean-abs``)."""
    if how == "sum":
        return total_E
    return (jnp.abs(total_E) if how == "abs-mean" else total_E) / w_N.sum()


def _weighted_median(s_NxE: jax.Array, w_N: jax.Array) -> jax.Array:
    order = jnp.argsort(s_NxE, axis=0)
    values = jnp.take_along_axis(s_NxE, order, axis=0)
    cum = jnp.cumsum(w_N[order], axis=0)
    half = cum[-1] / 2
    lo = jnp.argmax(cum >= half, axis=0)
    hi = jnp.argmax(cum > half, axis=0)
    pick = lambda idx: jnp.take_along_axis(values, idx[None], axis=0)[0]
    return (pick(lo) + pick(hi)) / 2
