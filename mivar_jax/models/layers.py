"""Sublayers of the decoder as pure functions over the parameter pytree.

Conventions (shape letters: docs/architecture.md): head-major activations ``[heads, N, P, Dh]``
(``heads``: any head axis, the H query heads, the K key/value heads or a subset); residual-stream
arrays ``[N, P, D]``; per-slot inputs of the graph form stacked ``[3H, N, P, D]`` (q inputs of heads
0…H-1, then k, then v).
A head's output is its residual write after W_O without the shared bias b_O; an MLP's output
includes its output bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.params import Params


def norm(cfg: ModelConfig, p: Params, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]
    else:
        return rms_norm(x, p["scale"], cfg.norm_eps)
    return y.astype(x.dtype)


def rms_norm(x: Float[Array, "... W"], scale: Float[Array, " W"], eps: float) -> Float[Array, "... W"]:
    """x / √(mean x² + ε) · scale over the last axis (float32 statistics, HF's rounding)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return (y.astype(x.dtype) * scale).astype(x.dtype)


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


def position_ids(attention_mask: Int[ArrayLike, "N P"]) -> Int[Array, "N P"]:
    """Positions counted over real tokens only (so left padding is harmless)."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)


def rope(
    cfg: ModelConfig, x: Float[Array, "heads N P Dh"], positions: Int[Array, "N P"], layer: Int[Array, ""] | int
) -> Float[Array, "heads N P Dh"]:
    """Rotary embedding, rotate-half convention (HF): the two halves of each head's first R
    dimensions (R = 2 · len(rope_inv_freq); all of them unless partial) form pairs; the rest pass.
    A windowed ``layer`` rotates at ``rope_local_inv_freq`` where the config has them."""
    inv_freq = jnp.asarray(np.asarray(cfg.rope_inv_freq, np.float32))
    if cfg.rope_local_inv_freq is not None:
        local = jnp.asarray(np.asarray(cfg.rope_local_inv_freq, np.float32))
        inv_freq = jnp.where(span(cfg, layer) > 0, local, inv_freq)
    R = 2 * inv_freq.shape[0]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [N, P, R/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[None]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[None]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32[..., :R], 2, axis=-1)
    rotated = x32[..., :R] * cos + jnp.concatenate([-x2, x1], -1) * sin
    return jnp.concatenate([rotated, x32[..., R:]], -1).astype(x.dtype)


def expand_kv(cfg: ModelConfig, w: jax.Array) -> jax.Array:
    """Ungroup grouped-query weights or keys/values: [K, ...] → [H, ...] (query head h reads group h // (H/K))."""
    if cfg.n_kv_heads == cfg.n_heads:
        return w
    return jnp.repeat(w, cfg.n_heads // cfg.n_kv_heads, axis=0)


def project(
    x: jax.Array, w: Float[Array, "heads D Dh"], b: Float[Array, "heads Dh"] | None
) -> Float[Array, "heads N P Dh"]:
    """Per-head projection of a shared input ``x_NxPxD`` or per-head inputs ``x_headsxNxPxD`` (head-major)."""
    spec = "npd,hde->hnpe" if x.ndim == 3 else "hnpd,hde->hnpe"
    y = jnp.einsum(spec, x, w)
    return y if b is None else y + b[:, None, None, :]


def attend(
    cfg: ModelConfig,
    q_HxNxWxDh: jax.Array,
    k_KxNxPxDh: jax.Array,
    v_KxNxPxDh: jax.Array,
    attention_mask: Int[ArrayLike, "N P"],
    q_offset: Int[Array, ""] | Int[Array, " N"] | int = 0,
    span: Int[Array, ""] | int = 0,
) -> Float[Array, "H N W Dh"]:
    """Causal softmax attention over real keys; K = H (ungrouped) or fewer (grouped, repeated here),
    H the query heads computed (all or a subset).

    Queries may be a window of W positions starting at ``q_offset`` (one for all inputs, or one
    per input); keys always cover all P positions. ``span`` > 0 (sliding-window attention): the
    query at index i sees only keys at indices > i − span. Logits: q·k · ``attn_scale`` (default
    1/√Dh), soft-capped by ``attn_softcap``."""
    n_heads = q_HxNxWxDh.shape[0]
    if k_KxNxPxDh.shape[0] != n_heads:
        k_KxNxPxDh = jnp.repeat(k_KxNxPxDh, n_heads // k_KxNxPxDh.shape[0], axis=0)
        v_KxNxPxDh = jnp.repeat(v_KxNxPxDh, n_heads // v_KxNxPxDh.shape[0], axis=0)
    W, P = q_HxNxWxDh.shape[2], k_KxNxPxDh.shape[2]
    scale = 1 / np.sqrt(cfg.d_head) if cfg.attn_scale is None else cfg.attn_scale
    scores = softcap(
        jnp.einsum("hnqe,hnke->hnqk", q_HxNxWxDh, k_KxNxPxDh).astype(jnp.float32) * scale, cfg.attn_softcap
    )
    offset = jnp.reshape(jnp.asarray(q_offset), (-1, 1, 1))  # [1 or N, 1, 1]
    key_i, query_i = jnp.arange(P)[None, None, :], jnp.arange(W)[None, :, None] + offset
    allowed = (key_i <= query_i) & ((span <= 0) | (key_i > query_i - span))
    allowed = allowed[None] & (attention_mask[None, :, None, :] > 0)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_KxNxPxDh.dtype)
    return jnp.einsum("hnqk,hnke->hnqe", probs, v_KxNxPxDh)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """cap · tanh(x / cap) (cap 0: x unchanged)."""
    return cap * jnp.tanh(x / cap) if cap else x


def span(cfg: ModelConfig, layer: Int[Array, ""] | int) -> Int[Array, ""] | int:
    """The sliding-window span of ``layer`` (0: none)."""
    return jnp.asarray(cfg.windows, jnp.int32)[layer] if cfg.windows else 0


def slot_weights(cfg: ModelConfig, p: Params, heads: Int[Array, " heads"] | None = None):
    """The q, k, v projections (and biases, or None) of query heads ``heads`` (default: all),
    stacked in slot order [3·heads, D, Dh]: q of each head, then k, then v (GQA ungrouped)."""
    group = cfg.n_heads // cfg.n_kv_heads
    if heads is None:
        pick_q = pick_kv = lambda a: a
        if group > 1:
            pick_kv = lambda a: jnp.repeat(a, group, axis=0)
    else:
        pick_q, pick_kv = (lambda a: a[heads]), (lambda a: a[heads // group])
    w = jnp.concatenate([pick_q(p["w_q"]), pick_kv(p["w_k"]), pick_kv(p["w_v"])])
    if not cfg.qkv_bias:
        return w, None
    return w, jnp.concatenate([pick_q(p["b_q"]), pick_kv(p["b_k"]), pick_kv(p["b_v"])])


def qkv(cfg: ModelConfig, p: Params, x: jax.Array, heads: Int[Array, " heads"] | None = None):
    """Queries, keys, values (head-major [heads, N, P, Dh], before RoPE) from the attention inputs,
    normalised here.

    ``x`` is one shared input [N, P, D] (keys/values stay grouped as K heads) or the stacked
    per-slot inputs [3·heads, N, P, D] of query heads ``heads`` (default: all H; q inputs, then k, then
    v): every query head then gets its own key and value (GQA ungrouped).

    ``qk_norm="all"`` normalises here: a query (key) slot by the RMS of all H (K) heads'
    projections of its own input, from the Gram matrix W Wᵀ [D, D] when inputs are per slot."""
    h = norm(cfg, p["ln1"], x) if cfg.pre_norms else x
    if x.ndim == 3:
        q, k, v = (project(h, p[f"w_{n}"], p.get(f"b_{n}")) for n in "qkv")
        if cfg.qk_norm == "all":
            q, k = (
                _joint_rms(cfg, y, jnp.square(y.astype(jnp.float32)).mean((0, -1)), p[f"{n}_norm"])
                for y, n in ((q, "q"), (k, "k"))
            )
        return q, k, v
    q, k, v = jnp.split(project(h, *slot_weights(cfg, p, heads)), 3)
    if cfg.qk_norm == "all":
        group = cfg.n_heads // cfg.n_kv_heads
        q_heads = jnp.arange(cfg.n_heads) if heads is None else heads
        h_q, h_k, _ = jnp.split(h.astype(jnp.float32), 3)

        def mean_square(x, w):  # mean over every head's projection of each slot's input [slots, N, P]
            gram = jnp.einsum("hde,hfe->df", w, w).astype(jnp.float32) / (w.shape[0] * w.shape[2])
            return jnp.einsum("snpd,df,snpf->snp", x, gram, x)

        q = _joint_rms(cfg, q, mean_square(h_q, p["w_q"]), p["q_norm"], q_heads)
        k = _joint_rms(cfg, k, mean_square(h_k, p["w_k"]), p["k_norm"], q_heads // group)
    return q, k, v


def _joint_rms(cfg: ModelConfig, y, mean_square, w, rows=None):
    """``y`` [heads, N, P, Dh] / √(mean_square + ε) ⊙ the weights ``w`` [n·Dh] of heads ``rows``
    (default: all n)."""
    w = w.reshape(-1, cfg.d_head)
    w = w if rows is None else w[rows]
    out = y.astype(jnp.float32) * jax.lax.rsqrt(mean_square + cfg.norm_eps)[..., None]
    return (out * w[:, None, None, :]).astype(y.dtype)


def rotate(
    cfg: ModelConfig, p: Params, q: jax.Array, k: jax.Array, positions: Int[Array, "N P"], layer: Int[Array, ""] | int
):
    """Queries and keys ready for attention: each head's RMSNorm over its width (``qk_norm="head"``;
    ``"all"`` is applied in ``qkv``), then RoPE (learned positions are in the input)."""
    if cfg.qk_norm == "head":
        q, k = rms_norm(q, p["q_norm"], cfg.norm_eps), rms_norm(k, p["k_norm"], cfg.norm_eps)
    if cfg.positional != "rope":
        return q, k
    return rope(cfg, q, positions, layer), rope(cfg, k, positions, layer)


def head_writes(cfg: ModelConfig, p: Params, z: jax.Array) -> jax.Array:
    """The heads' writes to the residual stream from their outputs after W_O: unchanged, or with
    ``post_norms`` each head's share of RMSNorm(Σ_h z_h), scale ⊙ z_h / rms(Σ_h z_h) (``z``
    per head [heads, N, P, D] over all H heads, or already summed [N, P, D])."""
    if not cfg.post_norms:
        return z
    total = (sum_first_axis(z) if z.ndim == 4 else z).astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.square(total).mean(-1, keepdims=True) + cfg.norm_eps)
    return (z.astype(jnp.float32) * r * p["ln1_post"]["scale"]).astype(z.dtype)


def mlp(cfg: ModelConfig, p: Params, x: Float[Array, "N P D"]) -> Float[Array, "N P D"]:
    """An MLP's residual write given its residual input (applies ln2; includes b_out; then the
    post-norm ``ln2_post`` with ``post_norms``)."""
    h = norm(cfg, p["ln2"], x) if cfg.pre_norms else x
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
    out = out + p["b_out"] if cfg.mlp_bias else out
    return rms_norm(out, p["ln2_post"]["scale"], cfg.norm_eps) if cfg.post_norms else out


def embed(
    cfg: ModelConfig, params: Params, tokens: Int[ArrayLike, "N P"], positions: Int[Array, "N P"]
) -> Float[Array, "N P D"]:
    """The ``input`` node: token embeddings (· ``embed_scale``, rounded to the dtype as HF does)
    (+ learned position embeddings)."""
    x = params["tok_embed"][tokens]
    if cfg.embed_scale != 1.0:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    if cfg.positional == "learned":
        x = x + params["pos_embed"][positions]
    return x


def unembed(cfg: ModelConfig, params: Params, x: Float[Array, "... D"]) -> Float[Array, "... V"]:
    """Final norm and unembedding of residual-stream vectors (soft-capped by ``logit_softcap``).
    The logits are float32 whatever the compute dtype (the product accumulates in float32): metrics,
    and exact scores as their differences, keep their digits in a bfloat16 model."""
    w_u = params["tok_embed"].T if cfg.tied_embeddings else params["unembed"]
    logits = jnp.matmul(norm(cfg, params["ln_f"], x), w_u, preferred_element_type=jnp.float32)
    return softcap(logits, cfg.logit_softcap)


def output_bias(cfg: ModelConfig, blocks: Params, dtype) -> Float[Array, "L D"]:
    b_o = blocks.get("b_o")
    return jnp.zeros((cfg.n_layers, cfg.d_model), dtype) if b_o is None else b_o


def at_positions(x_NxPxD: jax.Array, logit_positions: Int[ArrayLike, " N"] | None) -> jax.Array:
    if logit_positions is None:
        return x_NxPxD
    return jnp.take_along_axis(x_NxPxD, logit_positions[:, None, None], axis=1)[:, 0]


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
