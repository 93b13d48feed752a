"""Building blocks for exact patching: the clean run's residual states, one head recomputed from
its own q/k/v inputs, and the rest of the network from a given layer.

The layer to start from is a traced integer (``lax.fori_loop``), so one compilation serves every
layer; everything vmaps over a batch of patches (the edges of a chunk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import attend, block, norm, output_bias, rope, sum_first_axis
from mivar_jax.models.params import Params


def layer_params(params: Params, layer: Int[Array, ""]) -> Params:
    """Block parameters of one layer (a traced index)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False), params["blocks"])


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


def head_output(
    cfg: ModelConfig,
    p: Params,
    head: Int[Array, ""],
    x_q: Float[Array, "N P D"],
    x_k: Float[Array, "N P D"],
    x_v: Float[Array, "N P D"],
    positions: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"],
) -> Float[Array, "N P D"]:
    """One head's residual write (no b_O) when its query, key and value read their own inputs."""
    group = head // (cfg.n_heads // cfg.n_kv_heads)

    def proj(x, w, b, index):
        y = jnp.einsum("npd,de->npe", norm(cfg, p["ln1"], x), w[index])
        return (y if b is None else y + b[index])[None]  # [1, N, P, E]

    q = proj(x_q, p["w_q"], p.get("b_q"), head)
    k = proj(x_k, p["w_k"], p.get("b_k"), group)
    v = proj(x_v, p["w_v"], p.get("b_v"), group)
    if cfg.positional == "rope":
        q, k = rope(cfg, q, positions), rope(cfg, k, positions)
    o = attend(cfg, q, k, v, attention_mask)[0]
    return jnp.einsum("npe,ed->npd", o, p["w_o"][head])


def run_from(
    cfg: ModelConfig,
    params: Params,
    x: Float[Array, "N P D"],
    positions: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"],
    start: Int[Array, ""],
) -> Float[Array, "N P D"]:
    """The residual stream after layers ``start`` … L-1, given the stream before layer ``start``."""
    return jax.lax.fori_loop(
        start, cfg.n_layers, lambda i, h: block(cfg, layer_params(params, i), h, positions, attention_mask), x
    )
