"""The clean run of a batch as patched runs start from it: residual streams, node outputs, key/value
caches, reference deltas; and the rest of the network from a given layer on a window.

The layer to start from is a traced integer (``lax.fori_loop``), so one compilation serves every
layer; everything vmaps over a batch of patches (the edges of a chunk).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import Residual, Window
from mivar_jax.models.layers import at_positions, output_bias, position_ids, qkv, rotate, sum_first_axis
from mivar_jax.models.params import Params, layer_params
from mivar_jax.models.transformer import block, trace
from mivar_jax.patching.reference import answer_metric, reference_values
from mivar_jax.tasks.data import TaskBatch


class CleanState(NamedTuple):
    """The clean run of a batch, what every patch starts from."""

    pre: jax.Array  # [L, N, P, D] residual stream before each layer
    mid: jax.Array  # [L, N, P, D] … between attention and MLP
    final: jax.Array  # [N, P, D]
    nodes: jax.Array  # [S, N, P, D] clean node outputs
    delta: jax.Array  # [S, N, P, D] Δz = reference − clean
    keys: jax.Array  # [L, K, N, P, Dh] clean keys (after RoPE) and values of every layer
    values: jax.Array
    metric: jax.Array  # [N] clean metric
    attn: jax.Array | None = None  # [L, N, P, D] each layer's Σ_h z_h before its post-norm (post_norms only)


def clean_state(cfg: ModelConfig, metric: str, ablation: str, params, b: TaskBatch, noise, noise_seed, means):
    """The ``CleanState`` of batch ``b`` with reference values of ``ablation``."""
    ref_nodes, _ = reference_values(cfg, params, b, ablation, noise, noise_seed, means)
    record = ("nodes", "attn") if cfg.post_norms else ("nodes",)  # attn: each layer's Σ_h z_h before its post-norm
    run = trace(cfg, params, b.clean, b.attention_mask, logit_positions=b.answer_pos, record=record)
    nodes = run.nodes
    pre, mid, final = residual_states(cfg, params, nodes)
    keys, values = kv_caches(cfg, params, pre, position_ids(b.attention_mask))
    clean_metric = answer_metric(cfg, params, at_positions(final, b.answer_pos), b.correct, b.incorrect, metric)
    return CleanState(pre, mid, final, nodes, ref_nodes - nodes, keys, values, clean_metric, run.attn)


def residual_states(
    cfg: ModelConfig, params: Params, nodes_SxNxPxD: Float[Array, "S N P D"]
) -> tuple[Float[Array, "L N P D"], Float[Array, "L N P D"], Float[Array, "N P D"]]:
    """Residual streams of a run from its node outputs (+ the output biases): before each layer
    (``pre``), between each layer's attention and MLP (``mid``), and at the end (``final``)."""
    L, H = cfg.n_layers, cfg.n_heads
    per_layer = nodes_SxNxPxD[1:].reshape(L, H + 1, *nodes_SxNxPxD.shape[1:])
    b_o = output_bias(cfg, params["blocks"], nodes_SxNxPxD.dtype)

    def step(x, xs):
        z, bias = xs
        mid = x + sum_first_axis(z[:H]) + bias
        return mid + z[H], (x, mid)

    final, (pre, mid) = jax.lax.scan(step, nodes_SxNxPxD[0], (per_layer, b_o[:, None, None]))
    return pre, mid, final


def kv_caches(
    cfg: ModelConfig, params: Params, pre_LxNxPxD: Float[Array, "L N P D"], positions: Int[Array, "N P"]
) -> tuple[Float[Array, "L K N P Dh"], Float[Array, "L K N P Dh"]]:
    """Every layer's keys (after RoPE) and values of a run, from its residual streams."""

    def one(layer, p, x):
        q, k, v = qkv(cfg, p, x)
        return rotate(cfg, p, q, k, positions, layer)[1], v

    return jax.vmap(one)(jnp.arange(cfg.n_layers), params["blocks"], pre_LxNxPxD)


def run_to_answer(
    cfg: ModelConfig,
    params: Params,
    x: Float[Array, "N W D"],
    window: Window,
    positions: Int[Array, "N W"],
    attention_mask: Int[Array, "N P"],
    layer: Int[Array, ""],
    answer: Int[Array, " N"],
) -> Float[Array, "N D"]:
    """The final stream at each input's answer position (``answer``: index within the window),
    given the window's stream before ``layer``. Layers ``layer`` … L-2 run on the whole window;
    the last one only needs its keys and values there, and everything else at the answer."""
    stream, last = Residual(), cfg.n_layers - 1

    def run(i, h, query=None):
        lx = (None, (window.keys[i], window.values[i]))
        return block(cfg, layer_params(params, i), i, h, stream, (window,), lx, positions, attention_mask, query)[0]

    def through_last(h):
        h = jax.lax.fori_loop(layer, last, run, h)
        return run(jnp.int32(last), h, answer)[:, 0]

    return jax.lax.cond(layer < cfg.n_layers, through_last, lambda h: at_positions(h, answer), x)
