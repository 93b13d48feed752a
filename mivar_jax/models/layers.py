"""Sublayers of the decoder as pure functions over the parameter pytree.

Conventions: head-major activations ``[heads, N, P, E]``; residual-stream arrays ``[N, P, D]``;
per-slot inputs of the graph form stacked ``[3H, N, P, D]`` (q inputs of heads 0…H-1, then k, then v).
A head's output is its residual write after W_O without the shared bias b_O; an MLP's output
includes its output bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.params import Params


def norm(cfg: ModelConfig, p: Params, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]
    else:
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + cfg.norm_eps)
        y = y.astype(x.dtype) * p["scale"]
    return y.astype(x.dtype)


def norm_pullback(cfg: ModelConfig, p: Params, x: Float[Array, "N P D"], g: Float[Array, "... N P D"]) -> jax.Array:
    """Cotangents ``g`` of ``norm(x)`` (any leading axes, one per cotangent) pulled back to ``x``:
    Jᵀg, written out so every reduction runs over the width (the vmapped autodiff form reduces
    over leading axes, which XLA:CPU does slowly). With r = 1/√(var + ε) (LayerNorm) or
    1/√(mean x² + ε) (RMSNorm), x̂ the normalised x and ĝ = g ⊙ scale:
    LayerNorm r (ĝ − mean ĝ − x̂ mean(ĝ x̂)); RMSNorm r (ĝ − x̂ mean(ĝ x̂))."""
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        centred = x32 - x32.mean(-1, keepdims=True)
        r = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + cfg.norm_eps)
        x_hat = centred * r
    else:
        r = jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + cfg.norm_eps)
        x_hat = x32 * r
    scale = p["scale"].astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    # the width reductions as contractions (XLA:CPU fuses plain reductions over these shapes poorly)
    g_dot_xhat = jnp.einsum("...npd,npd->...np", g32, x_hat * scale)[..., None] / x.shape[-1]
    out = g32 * scale - x_hat * g_dot_xhat
    if cfg.norm == "layernorm":
        out = out - jnp.einsum("...npd,d->...np", g32, scale)[..., None] / x.shape[-1]
    return (out * r).astype(g.dtype)


def activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
    if cfg.activation == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if cfg.activation == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if cfg.activation == "relu":
        return jax.nn.relu(x)
    return jax.nn.silu(x)


def position_ids(attention_mask: Int[Array, "N P"]) -> Int[Array, "N P"]:
    """Positions counted over real tokens only (so left padding is harmless)."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)


def rope(cfg: ModelConfig, x: Float[Array, "H N P E"], positions: Int[Array, "N P"]) -> Float[Array, "H N P E"]:
    """Rotary embedding, rotate-half convention (HF): the two halves of each head form pairs."""
    inv_freq = jnp.asarray(np.asarray(cfg.rope_inv_freq, np.float32))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [N, P, E/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[None]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def expand_kv(cfg: ModelConfig, w: jax.Array) -> jax.Array:
    """Ungroup grouped-query weights or keys/values: [K, ...] → [H, ...] (query head h reads group h // (H/K))."""
    if cfg.n_kv_heads == cfg.n_heads:
        return w
    return jnp.repeat(w, cfg.n_heads // cfg.n_kv_heads, axis=0)


def project(x: jax.Array, w: Float[Array, "H D E"], b: Float[Array, "H E"] | None) -> Float[Array, "H N P E"]:
    """Per-head projection of a shared input ``x_NxPxD`` or per-head inputs ``x_HxNxPxD`` (head-major)."""
    spec = "npd,hde->hnpe" if x.ndim == 3 else "hnpd,hde->hnpe"
    y = jnp.einsum(spec, x, w)
    return y if b is None else y + b[:, None, None, :]


def attend(
    cfg: ModelConfig,
    q_HxNxPxE: jax.Array,
    k_GxNxPxE: jax.Array,
    v_GxNxPxE: jax.Array,
    attention_mask: Int[Array, "N P"],
    q_offset: Int[Array, ""] | Int[Array, " N"] | int = 0,
) -> Float[Array, "H N Q E"]:
    """Causal softmax attention over real keys; G = H (ungrouped) or fewer (grouped, repeated here).

    Queries may be a window of Q positions starting at ``q_offset`` (one for all inputs, or one
    per input); keys always cover all P positions."""
    n_heads = q_HxNxPxE.shape[0]
    if k_GxNxPxE.shape[0] != n_heads:
        k_GxNxPxE = jnp.repeat(k_GxNxPxE, n_heads // k_GxNxPxE.shape[0], axis=0)
        v_GxNxPxE = jnp.repeat(v_GxNxPxE, n_heads // v_GxNxPxE.shape[0], axis=0)
    Q, P = q_HxNxPxE.shape[2], k_GxNxPxE.shape[2]
    scores = jnp.einsum("hnqe,hnke->hnqk", q_HxNxPxE, k_GxNxPxE).astype(jnp.float32) / np.sqrt(cfg.d_head)
    offset = jnp.reshape(jnp.asarray(q_offset), (-1, 1, 1))  # [1 or N, 1, 1]
    causal = jnp.arange(P)[None, None, :] <= jnp.arange(Q)[None, :, None] + offset
    allowed = causal[None] & (attention_mask[None, :, None, :] > 0)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_GxNxPxE.dtype)
    return jnp.einsum("hnqk,hnke->hnqe", probs, v_GxNxPxE)


def slot_weights(cfg: ModelConfig, p: Params) -> Float[Array, "3H D E"]:
    """The q, k, v projections of every query head's slots, stacked in slot order (GQA ungrouped)."""
    return jnp.concatenate([p["w_q"], expand_kv(cfg, p["w_k"]), expand_kv(cfg, p["w_v"])])


def qkv(
    cfg: ModelConfig,
    p: Params,
    x: jax.Array,
    positions: Int[Array, "N P"],
    taps: Float[Array, "3H N P E"] | None = None,
):
    """Queries, keys, values (head-major [heads, N, P, E]) from the attention inputs, normalised here.

    ``x`` is one shared input [N, P, D] (the plain forward: keys/values stay grouped as K heads) or
    the stacked per-slot inputs [3H, N, P, D] of the graph form (q inputs of heads 0…H-1, then the
    k inputs, then the v inputs): every query head gets its own key and value (GQA ungrouped).
    ``taps`` (shared input only) are added to the projections before RoPE, keys and values
    ungrouped to one per query head: their gradients are ∂/∂(h W) of every q/k/v slot."""
    h = norm(cfg, p["ln1"], x)
    if x.ndim == 3:
        q = project(h, p["w_q"], p.get("b_q"))
        k = project(h, p["w_k"], p.get("b_k"))
        v = project(h, p["w_v"], p.get("b_v"))
        if taps is not None:
            H = cfg.n_heads
            q, k, v = q + taps[:H], expand_kv(cfg, k) + taps[H : 2 * H], expand_kv(cfg, v) + taps[2 * H :]
    else:
        b = (
            None
            if not cfg.qkv_bias
            else jnp.concatenate([p["b_q"], expand_kv(cfg, p["b_k"]), expand_kv(cfg, p["b_v"])])
        )
        q, k, v = jnp.split(project(h, slot_weights(cfg, p), b), 3)
    if cfg.positional == "rope":
        q, k = rope(cfg, q, positions), rope(cfg, k, positions)
    return q, k, v


def mlp(cfg: ModelConfig, p: Params, x: Float[Array, "N P D"]) -> Float[Array, "N P D"]:
    """An MLP's residual write given its residual input (applies ln2; includes b_out)."""
    h = norm(cfg, p["ln2"], x)
    a = h @ p["w_in"]
    if cfg.mlp_bias:
        a = a + p["b_in"]
    if cfg.gated_mlp:
        g = h @ p["w_gate"]
        if cfg.mlp_bias:
            g = g + p["b_gate"]
        a = activation(cfg, g) * a
    else:
        a = activation(cfg, a)
    out = a @ p["w_out"]
    return out + p["b_out"] if cfg.mlp_bias else out


def block(
    cfg: ModelConfig,
    p: Params,
    x: Float[Array, "N W D"],
    positions: Int[Array, "N W"],
    attention_mask: Int[Array, "N P"],
    cache: tuple[jax.Array, jax.Array] | None = None,
    start: Int[Array, ""] | Int[Array, " N"] | int = 0,
) -> Float[Array, "N W D"]:
    """One layer on a shared residual stream: x + attention(x) (+ b_O), then + MLP.

    With ``cache = (keys, values)`` [K, N, P, E] (another run's, all positions), ``x`` is a window
    of W positions from ``start`` (one for all inputs, or one per input) on: its keys and values
    replace the cached ones there, and the earlier positions attend as in the cached run (exact
    when that run agrees before ``start``)."""
    q, k, v = qkv(cfg, p, x, positions)
    if cache is not None:
        k = put_window(cache[0], k, start, axis=2)
        v = put_window(cache[1], v, start, axis=2)
    o = attend(cfg, q, k, v, attention_mask, q_offset=start)
    x = x + jnp.einsum("hnqe,hed->nqd", o, p["w_o"])
    if cfg.o_bias:
        x = x + p["b_o"]
    return x + mlp(cfg, p, x)


def embed(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    positions: Int[Array, "N P"],
) -> Float[Array, "N P D"]:
    """The ``input`` node: token embeddings (+ learned position embeddings)."""
    x = params["tok_embed"][tokens]
    if cfg.positional == "learned":
        x = x + params["pos_embed"][positions]
    return x


def unembed(cfg: ModelConfig, params: Params, x: Float[Array, "... D"]) -> Float[Array, "... V"]:
    """Final norm and unembedding of residual-stream vectors."""
    w_u = params["tok_embed"].T if cfg.tied_embeddings else params["unembed"]
    return norm(cfg, params["ln_f"], x) @ w_u


def output_bias(cfg: ModelConfig, blocks: Params, dtype) -> Float[Array, "L D"]:
    b_o = blocks.get("b_o")
    return jnp.zeros((cfg.n_layers, cfg.d_model), dtype) if b_o is None else b_o


def at_positions(x_NxPxD: jax.Array, logit_positions: Int[Array, " N"] | None) -> jax.Array:
    if logit_positions is None:
        return x_NxPxD
    return jnp.take_along_axis(x_NxPxD, logit_positions[:, None, None], axis=1)[:, 0]


def prepare(cfg, params, tokens, attention_mask, input_embeds):
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
    positions = position_ids(attention_mask)
    if input_embeds is None:
        x = embed(cfg, params, tokens, positions)
    else:
        x = input_embeds.astype(params["tok_embed"].dtype)
    return attention_mask, positions, x


def take_window(a: jax.Array, start: Int[Array, ""] | Int[Array, " N"], width: int, axis: int) -> jax.Array:
    """Positions [start, start + width) of ``a`` along ``axis`` (its positions axis; the inputs axis
    is the one before): ``start`` one for all inputs, or one per input [N]."""
    axis = axis % a.ndim
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_slice_in_dim(a, start, width, axis=axis)
    one = lambda a_n, s: jax.lax.dynamic_slice_in_dim(a_n, s, width, axis=axis - 1)
    return jax.vmap(one, in_axes=(axis - 1, 0), out_axes=axis - 1)(a, start)


def put_window(a: jax.Array, new: jax.Array, start: Int[Array, ""] | Int[Array, " N"], axis: int) -> jax.Array:
    """``a`` with positions [start, start + W) along ``axis`` replaced by ``new`` (see ``take_window``)."""
    axis = axis % a.ndim
    if jnp.ndim(start) == 0:
        return jax.lax.dynamic_update_slice_in_dim(a, new, start, axis=axis)
    one = lambda a_n, new_n, s: jax.lax.dynamic_update_slice_in_dim(a_n, new_n, s, axis=axis - 1)
    return jax.vmap(one, in_axes=(axis - 1, axis - 1, 0), out_axes=axis - 1)(a, new, start)


def sum_first_axis(x: jax.Array) -> jax.Array:
    """Σ over axis 0 as a contraction (XLA:CPU reduces leading axes ~50x slower than it contracts)."""
    return jnp.tensordot(jnp.ones(x.shape[0], x.dtype), x, axes=1)
