"""Building blocks for exact patching: the clean run's residual states and key/value caches,
one head recomputed from its own q/k/v inputs, and the rest of the network from a given layer.

A patch that leaves positions before ``start`` unchanged (counterfactual patching: clean and
corrupted prompts agree there, and attention is causal) is computed on the window of positions
from ``start`` on only, the earlier keys and values coming from the clean run's caches. The
layer to start from is a traced integer (``lax.fori_loop``), so one compilation serves every
layer; everything vmaps over a batch of patches (the edges of a chunk).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import (
    at_positions,
    attend,
    block,
    mlp,
    norm,
    output_bias,
    put_window,
    qkv,
    rope,
    sum_first_axis,
)
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


def kv_caches(
    cfg: ModelConfig, params: Params, pre_LxNxPxD: Float[Array, "L N P D"], positions: Int[Array, "N P"]
) -> tuple[Float[Array, "L K N P E"], Float[Array, "L K N P E"]]:
    """Every layer's keys (after RoPE) and values of a run, from its residual streams."""

    def one(p, x):
        _, k, v = qkv(cfg, p, x, positions)
        return k, v

    return jax.vmap(one)(params["blocks"], pre_LxNxPxD)


def head_output(
    cfg: ModelConfig,
    p: Params,
    head: Int[Array, ""],
    x_q: Float[Array, "N W D"],
    x_k: Float[Array, "N W D"],
    x_v: Float[Array, "N W D"],
    cache: tuple[Float[Array, "K N P E"], Float[Array, "K N P E"]],
    positions: Int[Array, "N W"],
    attention_mask: Int[Array, "N P"],
    start: Int[Array, ""] | Int[Array, " N"],
) -> Float[Array, "N W D"]:
    """One head's residual write (no b_O) on the window from ``start``, when its query, key and
    value read their own inputs there (the layer's cached keys/values before ``start``)."""
    group = head // (cfg.n_heads // cfg.n_kv_heads)

    def proj(x, w, b, index):
        y = jnp.einsum("npd,de->npe", norm(cfg, p["ln1"], x), w[index])
        return (y if b is None else y + b[index])[None]  # [1, N, W, E]

    q = proj(x_q, p["w_q"], p.get("b_q"), head)
    k = proj(x_k, p["w_k"], p.get("b_k"), group)
    v = proj(x_v, p["w_v"], p.get("b_v"), group)
    if cfg.positional == "rope":
        q, k = rope(cfg, q, positions), rope(cfg, k, positions)
    k = put_window(cache[0][group][None], k, start, axis=2)
    v = put_window(cache[1][group][None], v, start, axis=2)
    o = attend(cfg, q, k, v, attention_mask, q_offset=start)[0]
    return jnp.einsum("npe,ed->npd", o, p["w_o"][head])


def run_to_answer(
    cfg: ModelConfig,
    params: Params,
    x: Float[Array, "N W D"],
    caches: tuple[Float[Array, "L K N P E"], Float[Array, "L K N P E"]],
    positions: Int[Array, "N W"],
    attention_mask: Int[Array, "N P"],
    layer: Int[Array, ""],
    start: Int[Array, ""] | Int[Array, " N"],
    answer: Int[Array, " N"],
) -> Float[Array, "N D"]:
    """The final stream at each input's answer position (``answer``: index within the window),
    given the window's stream before ``layer``. Layers ``layer`` … L-2 run on the whole window;
    the last one only needs its keys and values there, and everything else at the answer."""

    def body(i, h):
        cache = (caches[0][i], caches[1][i])
        return block(cfg, layer_params(params, i), h, positions, attention_mask, cache, start)

    def through_last(h):
        h = jax.lax.fori_loop(layer, cfg.n_layers - 1, body, h)
        p = layer_params(params, jnp.int32(cfg.n_layers - 1))
        q, k, v = qkv(cfg, p, h, positions)
        k = put_window(caches[0][-1], k, start, axis=2)
        v = put_window(caches[1][-1], v, start, axis=2)
        q = jnp.take_along_axis(q, answer[None, :, None, None], axis=2)  # [H, N, 1, E]
        o = attend(cfg, q, k, v, attention_mask, q_offset=start + answer)
        x_ans = at_positions(h, answer) + jnp.einsum("hnqe,hed->nd", o, p["w_o"])
        if cfg.o_bias:
            x_ans = x_ans + p["b_o"]
        return x_ans + mlp(cfg, p, x_ans)

    return jax.lax.cond(layer < cfg.n_layers, through_last, lambda h: at_positions(h, answer), x)
