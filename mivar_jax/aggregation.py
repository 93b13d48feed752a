"""Aggregation of per-input scores over inputs: pure, jit-able, optionally weighted.

``weights`` [N] (e.g. bootstrap multinomial counts) make every aggregation that of the weighted
multiset: integer weights give exactly the statistic of the resampled dataset.

- ``mean`` (the reference library's): Σ w s / Σ w
- ``median``: the weighted median; for integer weights it equals ``np.median`` of the multiset
  (the two middle values averaged when the total weight is even)
- ``mean-abs``: Σ w |s| / Σ w
- ``abs-mean``: |Σ w s / Σ w|
- ``sum``: Σ w s
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

AGGREGATIONS = ("mean", "median", "mean-abs", "abs-mean", "sum")


def check_aggregation(how: str) -> None:
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose from {list(AGGREGATIONS)}")


def aggregate(
    per_input_NxE: Float[Array, "N E"], how: str = "mean", weights_N: Float[Array, " N"] | None = None
) -> Float[Array, " E"]:
    """Aggregate per-input scores [N, E] over inputs into [E]."""
    check_aggregation(how)
    s = jnp.asarray(per_input_NxE, jnp.float32)
    w = jnp.ones(s.shape[0], jnp.float32) if weights_N is None else jnp.asarray(weights_N, jnp.float32)
    total = w.sum()
    if how == "sum":
        return w @ s
    if how == "mean":
        return (w @ s) / total
    if how == "mean-abs":
        return (w @ jnp.abs(s)) / total
    if how == "abs-mean":
        return jnp.abs(w @ s) / total
    return _weighted_median(s, w)


def _weighted_median(s_NxE: jax.Array, w_N: jax.Array) -> jax.Array:
    order = jnp.argsort(s_NxE, axis=0)
    values = jnp.take_along_axis(s_NxE, order, axis=0)
    cum = jnp.cumsum(w_N[order], axis=0)
    half = cum[-1] / 2
    lo = jnp.argmax(cum >= half, axis=0)
    hi = jnp.argmax(cum > half, axis=0)
    pick = lambda idx: jnp.take_along_axis(values, idx[None], axis=0)[0]
    return (pick(lo) + pick(hi)) / 2
