"""Task metrics: jit-able functions of the logits at the answer position.

Answer sets are int32 arrays [N, Ac] (correct) and [N, Ai] (incorrect), padded with -1. Every
metric returns one value per input [N].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int


def _masked_mean(values_NxA: jax.Array, ids_NxA: ArrayLike) -> jax.Array:
    valid = ids_NxA >= 0
    return jnp.where(valid, values_NxA, 0).sum(-1) / jnp.maximum(valid.sum(-1), 1)


def _gather(x_NxV: ArrayLike, ids_NxA: ArrayLike) -> jax.Array:
    return jnp.take_along_axis(x_NxV, jnp.maximum(ids_NxA, 0), axis=-1)


def logit_diff(
    logits_NxV: Float[ArrayLike, "N V"], correct_NxAc: Int[ArrayLike, "N Ac"], incorrect_NxAi: Int[ArrayLike, "N Ai"]
) -> Float[Array, " N"]:
    """Mean logit of the correct answers minus mean logit of the incorrect ones.

    IOI: logit(IO) − logit(S). SVA: the verb pairs are aligned (correct[k] and incorrect[k] are
    two forms of one verb), so this is the mean over pairs of logit(correct form) − logit(incorrect).
    """
    mean = lambda ids: _masked_mean(_gather(logits_NxV.astype(jnp.float32), ids), ids)
    return mean(correct_NxAc) - mean(incorrect_NxAi)


def prob_diff(
    logits_NxV: Float[ArrayLike, "N V"], correct_NxAc: Int[ArrayLike, "N Ac"], incorrect_NxAi: Int[ArrayLike, "N Ai"]
) -> Float[Array, " N"]:
    """Probability mass on the correct answers minus mass on the incorrect ones (Greater-Than:
    years > YY minus years ≤ YY), softmax over the whole vocabulary."""
    probs = jax.nn.softmax(logits_NxV.astype(jnp.float32), axis=-1)
    mass = lambda ids: jnp.where(ids >= 0, _gather(probs, ids), 0).sum(-1)
    return mass(correct_NxAc) - mass(incorrect_NxAi)


def kl_divergence(
    logits_NxV: Float[ArrayLike, "N V"], reference_logits_NxV: Float[ArrayLike, "N V"]
) -> Float[Array, " N"]:
    """KL(reference ‖ logits) per input, in nats (e.g. KL(clean model ‖ patched model)).

    With p = softmax(reference) and d = Δ − E_p[Δ], Δ = reference − logits: KL = log E_p[e^(−d)],
    computed as log1p(E_p[expm1(−d)]), which keeps a small KL's digits (Σ p (log p − log q) loses
    them to cancellation: ~1e-6 nats in float32), and as logsumexp(log p − d) where e^(−d) could
    overflow."""
    ref = reference_logits_NxV.astype(jnp.float32)
    log_p = jax.nn.log_softmax(ref, -1)
    p = jnp.exp(log_p)
    delta = ref - logits_NxV.astype(jnp.float32)
    d = delta - (p * delta).sum(-1, keepdims=True)
    small = jnp.log1p((p * jnp.expm1(jnp.minimum(-d, _EXP_SAFE))).sum(-1))
    large = jax.nn.logsumexp(log_p - d, -1)
    return jnp.maximum(jnp.where((-d).max(-1) < _EXP_SAFE, small, large), 0.0)


_EXP_SAFE = 60.0  # e^60 · 2^17 vocabulary entries stays finite in float32


METRICS: dict[str, Callable] = {"logit_diff": logit_diff, "prob_diff": prob_diff}


def get_metric(name: str) -> Callable:
    """An answer metric by name: ``logit_diff`` or ``prob_diff`` (signature: logits, correct, incorrect)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]
