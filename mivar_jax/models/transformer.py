"""The decoder in graph form: parameters (Flax NNX) and pure forward functions.

One architecture covers GPT-2 and the Llama family: pre-norm sequential blocks, each an
attention layer then an MLP, with LayerNorm or RMSNorm, learned positions or RoPE, GELU or
SwiGLU MLPs, optional biases and grouped-query attention.

Parameters are a pytree with every block parameter stacked on a leading layer axis, so the
forward passes ``lax.scan`` over layers. Shapes (names end in their axes, nanodo style):
N inputs, P positions, D model width, H query heads, K key/value heads, E head width (d_head),
F MLP width, V vocabulary, L layers, S source nodes, T destination slots.

Node outputs (the graph's sources) are source-major ``[S, N, P, D]``:
``input`` = token (+ position) embeddings; a head's output = its residual write after W_O
without the shared output bias b_O; an MLP's output = its residual write (with its output bias).
Input-independent constants (the b_O of each layer) are not nodes: every destination reads them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig

Params = dict[str, Any]
_MIX_GROUPS = 4  # scans of the mixing-mode forward (more: less mixing work, longer compiles)


# ================================================================================ parameters
class Norm(nnx.Module):
    """LayerNorm (scale, bias) or RMSNorm (scale), optionally stacked over layers."""

    def __init__(self, cfg: ModelConfig, lead: tuple[int, ...], *, rngs: nnx.Rngs, dtype):
        shape = lead + (cfg.d_model,)
        self.scale = nnx.Param(jnp.ones(shape, dtype) + 0.02 * jax.random.normal(rngs.params(), shape, dtype))
        self.bias = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, dtype)) if cfg.norm == "layernorm" else None
        )


class Blocks(nnx.Module):
    """All L blocks' parameters, stacked on axis 0."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, scale: float):
        L, H, K, D, E, F = (
            cfg.n_layers,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.d_model,
            cfg.d_head,
            cfg.d_mlp,
        )

        def normal(*shape):
            return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))

        self.ln1 = Norm(cfg, (L,), rngs=rngs, dtype=dtype)
        self.w_q, self.w_k, self.w_v = (
            normal(L, H, D, E),
            normal(L, K, D, E),
            normal(L, K, D, E),
        )
        self.b_q = normal(L, H, E) if cfg.qkv_bias else None
        self.b_k = normal(L, K, E) if cfg.qkv_bias else None
        self.b_v = normal(L, K, E) if cfg.qkv_bias else None
        self.w_o = normal(L, H, E, D)
        self.b_o = normal(L, D) if cfg.o_bias else None
        self.ln2 = Norm(cfg, (L,), rngs=rngs, dtype=dtype)
        self.w_in = normal(L, D, F)
        self.b_in = normal(L, F) if cfg.mlp_bias else None
        self.w_gate = normal(L, D, F) if cfg.gated_mlp else None
        self.b_gate = normal(L, F) if cfg.gated_mlp and cfg.mlp_bias else None
        self.w_out = normal(L, F, D)
        self.b_out = normal(L, D) if cfg.mlp_bias else None


class Transformer(nnx.Module):
    """Flax NNX parameter container of a decoder; ``params(module)`` gives the pure pytree.

    ``Transformer(cfg, rngs=nnx.Rngs(0))`` draws random weights (N(0, scale²), norms ≈ 1),
    used for tests and benchmarks; the loaders fill the same structure from checkpoints.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        scale: float = 0.02,
    ):
        V, D = cfg.vocab_size, cfg.d_model
        self.tok_embed = nnx.Param(scale * jax.random.normal(rngs.params(), (V, D), dtype))
        self.pos_embed = (
            nnx.Param(scale * jax.random.normal(rngs.params(), (cfg.n_ctx, D), dtype))
            if cfg.positional == "learned"
            else None
        )
        self.blocks = Blocks(cfg, rngs=rngs, dtype=dtype, scale=scale)
        self.ln_f = Norm(cfg, (), rngs=rngs, dtype=dtype)
        self.unembed = (
            None if cfg.tied_embeddings else nnx.Param(scale * jax.random.normal(rngs.params(), (D, V), dtype))
        )


def init_params(cfg: ModelConfig, key: jax.Array, *, dtype=jnp.float32, scale: float = 0.02) -> Params:
    """Random parameters as a pure pytree (see ``Transformer``)."""
    return params_of(Transformer(cfg, rngs=nnx.Rngs(params=key), dtype=dtype, scale=scale))


def params_of(module: Transformer) -> Params:
    """The pure-dict pytree of a ``Transformer`` module (absent optional weights are absent)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def param_shapes(cfg: ModelConfig) -> Params:
    """Expected shapes of every parameter, as the pytree of ``init_params`` (no allocation)."""
    module = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return jax.tree.map(lambda x: tuple(x.shape), params_of(module))


# ================================================================================ sublayers
def _norm(cfg: ModelConfig, p: Params, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    if cfg.norm == "layernorm":
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]
    else:
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + cfg.norm_eps)
        y = y.astype(x.dtype) * p["scale"]
    return y.astype(x.dtype)


def _activation(cfg: ModelConfig, x: jax.Array) -> jax.Array:
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


def _rope(cfg: ModelConfig, x: Float[Array, "H N P E"], positions: Int[Array, "N P"]) -> Float[Array, "H N P E"]:
    """Rotary embedding, rotate-half convention (HF): the two halves of each head form pairs."""
    inv_freq = jnp.asarray(np.asarray(cfg.rope_inv_freq, np.float32))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [N, P, E/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[None]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[None]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def _expand_kv(cfg: ModelConfig, w: jax.Array) -> jax.Array:
    """Ungroup grouped-query weights: [K, ...] → [H, ...] (query head h reads group h // (H/K))."""
    if cfg.n_kv_heads == cfg.n_heads:
        return w
    return jnp.repeat(w, cfg.n_heads // cfg.n_kv_heads, axis=0)


def _project(x: jax.Array, w: Float[Array, "H D E"], b: Float[Array, "H E"] | None) -> Float[Array, "H N P E"]:
    """Per-head projection of a shared input ``x_NxPxD`` or per-head inputs ``x_HxNxPxD`` (head-major)."""
    spec = "npd,hde->hnpe" if x.ndim == 3 else "hnpd,hde->hnpe"
    y = jnp.einsum(spec, x, w)
    return y if b is None else y + b[:, None, None, :]


def _attend(
    cfg: ModelConfig,
    q_HxNxPxE: jax.Array,
    k_GxNxPxE: jax.Array,
    v_GxNxPxE: jax.Array,
    attention_mask: Int[Array, "N P"],
) -> Float[Array, "H N P E"]:
    """Causal softmax attention over real keys; G = H (ungrouped) or K (grouped, repeated here)."""
    if k_GxNxPxE.shape[0] != cfg.n_heads:
        k_GxNxPxE = jnp.repeat(k_GxNxPxE, cfg.n_heads // k_GxNxPxE.shape[0], axis=0)
        v_GxNxPxE = jnp.repeat(v_GxNxPxE, cfg.n_heads // v_GxNxPxE.shape[0], axis=0)
    P = q_HxNxPxE.shape[2]
    scores = jnp.einsum("hnqe,hnke->hnqk", q_HxNxPxE, k_GxNxPxE).astype(jnp.float32) / np.sqrt(cfg.d_head)
    allowed = jnp.tril(jnp.ones((P, P), bool))[None, None] & (attention_mask[None, :, None, :] > 0)
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_GxNxPxE.dtype)
    return jnp.einsum("hnqk,hnke->hnqe", probs, v_GxNxPxE)


def _qkv(cfg: ModelConfig, p: Params, x: jax.Array, positions: Int[Array, "N P"]):
    """Queries, keys, values (head-major [heads, N, P, E]) from the attention inputs, normalised here.

    ``x`` is one shared input [N, P, D] (the plain forward: keys/values stay grouped as K heads) or
    the stacked per-slot inputs [3H, N, P, D] of the graph form (q inputs of heads 0…H-1, then the
    k inputs, then the v inputs): every query head gets its own key and value (GQA ungrouped)."""
    h = _norm(cfg, p["ln1"], x)
    if x.ndim == 3:
        q = _project(h, p["w_q"], p.get("b_q"))
        k = _project(h, p["w_k"], p.get("b_k"))
        v = _project(h, p["w_v"], p.get("b_v"))
    else:
        w = jnp.concatenate([p["w_q"], _expand_kv(cfg, p["w_k"]), _expand_kv(cfg, p["w_v"])])
        b = (
            None
            if not cfg.qkv_bias
            else jnp.concatenate([p["b_q"], _expand_kv(cfg, p["b_k"]), _expand_kv(cfg, p["b_v"])])
        )
        q, k, v = jnp.split(_project(h, w, b), 3)
    if cfg.positional == "rope":
        q, k = _rope(cfg, q, positions), _rope(cfg, k, positions)
    return q, k, v


def _mlp(cfg: ModelConfig, p: Params, x: Float[Array, "N P D"]) -> Float[Array, "N P D"]:
    """An MLP's residual write given its residual input (applies ln2; includes b_out)."""
    h = _norm(cfg, p["ln2"], x)
    a = h @ p["w_in"]
    if cfg.mlp_bias:
        a = a + p["b_in"]
    if cfg.gated_mlp:
        g = h @ p["w_gate"]
        if cfg.mlp_bias:
            g = g + p["b_gate"]
        a = _activation(cfg, g) * a
    else:
        a = _activation(cfg, a)
    out = a @ p["w_out"]
    return out + p["b_out"] if cfg.mlp_bias else out


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
    return _norm(cfg, params["ln_f"], x) @ w_u


def _output_bias(cfg: ModelConfig, blocks: Params, dtype) -> Float[Array, "L D"]:
    b_o = blocks.get("b_o")
    return jnp.zeros((cfg.n_layers, cfg.d_model), dtype) if b_o is None else b_o


def _at_positions(x_NxPxD: jax.Array, logit_positions: Int[Array, " N"] | None) -> jax.Array:
    if logit_positions is None:
        return x_NxPxD
    return jnp.take_along_axis(x_NxPxD, logit_positions[:, None, None], axis=1)[:, 0]


def _prepare(cfg, params, tokens, attention_mask, input_embeds):
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
    positions = position_ids(attention_mask)
    if input_embeds is None:
        x = embed(cfg, params, tokens, positions)
    else:
        x = input_embeds.astype(params["tok_embed"].dtype)
    return attention_mask, positions, x


# ================================================================================ plain forward
def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None = None,
    *,
    input_embeds: Float[Array, "N P D"] | None = None,
    logit_positions: Int[Array, " N"] | None = None,
) -> Float[Array, "N P V"] | Float[Array, "N V"]:
    """The ordinary forward pass (one residual stream, heads summed).

    ``input_embeds`` replaces the ``input`` node's output; ``logit_positions`` [N] returns only
    the logits at one position per input ([N, V] instead of [N, P, V]).
    """
    attention_mask, positions, x = _prepare(cfg, params, tokens, attention_mask, input_embeds)

    def layer(x, p):
        q, k, v = _qkv(cfg, p, x, positions)
        o = _attend(cfg, q, k, v, attention_mask)
        x = x + jnp.einsum("hnqe,hed->nqd", o, p["w_o"])
        if cfg.o_bias:
            x = x + p["b_o"]
        return x + _mlp(cfg, p, x), None

    x, _ = jax.lax.scan(layer, x, params["blocks"])
    return unembed(cfg, params, _at_positions(x, logit_positions))


# ================================================================================ graph forward
def graph_forward(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None = None,
    *,
    corrupted: Float[Array, "S N P D"] | None = None,
    edge_mask: Float[Array, "S T"] | Float[Array, " Edges"] | None = None,
    taps: Float[Array, "T N P D"] | None = None,
    input_embeds: Float[Array, "N P D"] | None = None,
    logit_positions: Int[Array, " N"] | None = None,
) -> tuple[jax.Array, Float[Array, "S N P D"]]:
    """The graph-form forward: every destination slot reads its own input.

        in_v = Σ_u valid(u,v) · (M[u,v] · z_u + (1 − M[u,v]) · z̃_u) + b_v + tap_v

    z_u are this run's node outputs, z̃_u = ``corrupted`` (the corrupted run's node outputs, or
    zeros, or means; broadcast over N and P allowed), M = ``edge_mask`` (real-valued; dense
    [S, T] or flat [E] in the Graph's edge order; 1 = clean, 0 = corrupted), b_v the output
    biases upstream of v (constants, always present), ``tap_v`` an optional additive term (its
    gradient is ∂metric/∂in_v). With ``edge_mask=None`` every slot reads the clean residual
    stream (plus its tap) and ``corrupted`` is unused.

    Returns ``(logits, node_outputs)``: logits [N, P, V] (or [N, V] at ``logit_positions``) and
    node outputs [S, N, P, D]. Jit-able (cfg static), vmap-able over masks, taps and inputs,
    differentiable w.r.t. ``edge_mask``, ``taps``, ``corrupted`` and ``input_embeds``.
    """
    graph = cfg.graph
    L, H, D, S, T = cfg.n_layers, cfg.n_heads, cfg.d_model, graph.n_src, graph.n_dst
    slots = graph.slots_per_layer
    attention_mask, positions, x_NxPxD = _prepare(cfg, params, tokens, attention_mask, input_embeds)
    N, P = x_NxPxD.shape[:2]
    dtype = x_NxPxD.dtype
    blocks = params["blocks"]
    b_o_LxD = _output_bias(cfg, blocks, dtype)

    if taps is not None and taps.shape != (T, N, P, D):
        raise ValueError(f"taps must have shape {(T, N, P, D)} (slots, inputs, positions, width), got {taps.shape}")
    taps_LxSlotsxNxPxD = None if taps is None else taps[: L * slots].reshape(L, slots, N, P, D)
    tap_logits = None if taps is None else taps[-1]

    def attention_layer(qkv_in, p):
        """``qkv_in``: shared [N, P, D] or stacked per-slot inputs [3H, N, P, D]."""
        q, k, v = _qkv(cfg, p, qkv_in, positions)
        o = _attend(cfg, q, k, v, attention_mask)
        return jnp.einsum("hnqe,hed->hnqd", o, p["w_o"])  # per-head residual writes, no b_O

    if edge_mask is None:
        # Residual mode: every slot reads the clean residual stream plus its own tap.
        def layer(x, xs):
            p, taps_l = xs["p"], xs.get("taps")
            z_heads = attention_layer(x if taps_l is None else x[None] + taps_l[: 3 * H], p)
            x = x + _sum_first_axis(z_heads) + xs["b_o"]
            mlp_in = x if taps_l is None else x + taps_l[3 * H]
            z_mlp = _mlp(cfg, p, mlp_in)
            return x + z_mlp, jnp.concatenate([z_heads, z_mlp[None]], 0)

        xs = {"p": blocks, "b_o": b_o_LxD}
        if taps_LxSlotsxNxPxD is not None:
            xs["taps"] = taps_LxSlotsxNxPxD
        x_final, z_LxH1xNxPxD = jax.lax.scan(layer, x_NxPxD, xs)
        nodes_SxNxPxD = jnp.concatenate([x_NxPxD[None], z_LxH1xNxPxD.reshape(L * (H + 1), N, P, D)], 0)
        logits_in = x_final if tap_logits is None else x_final + tap_logits
        return unembed(cfg, params, _at_positions(logits_in, logit_positions)), nodes_SxNxPxD

    # Mixing mode, in delta form. With W = valid ⊙ M and d_u = z_u − z̃_u,
    #     in_v = Σ_u valid(u,v) z̃_u + Σ_u W[u,v] d_u  (+ biases + tap),
    # and the first sum is the corrupted residual stream where v sits, kept as a running sum:
    # one mixing product per layer instead of two.
    if corrupted is None:
        raise ValueError("edge_mask needs `corrupted` node outputs [S, N, P, D] (zeros for zero-ablation)")
    if corrupted.ndim != 4 or corrupted.shape[0] != S or corrupted.shape[3] != D:
        raise ValueError(f"corrupted must have shape [{S}, N, P, {D}] (broadcastable over N, P), got {corrupted.shape}")
    if corrupted.shape[2] not in (1, P):
        raise ValueError(
            f"corrupted has {corrupted.shape[2]} positions but the clean tokens have {P}: lengths must match"
        )
    if corrupted.shape[1] not in (1, N):
        raise ValueError(f"corrupted has {corrupted.shape[1]} inputs but the clean batch has {N}")
    corrupted = jnp.broadcast_to(corrupted.astype(dtype), (S, N, P, D))
    clean_w_SxT = jnp.asarray(graph.valid, dtype) * _dense_mask(graph, edge_mask, dtype)

    first_L = 1 + np.arange(L) * (H + 1)  # buffer row of each layer's first head
    heads_to_mlp_LxH = clean_w_SxT[first_L[:, None] + np.arange(H), (np.arange(L) * slots + 3 * H)[:, None]]

    def layer(carry, xs):
        d_SxNxPxD, corr_resid_NxPxD = carry  # deltas so far; corrupted residual stream (+ biases)
        p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, xs["layer"], keepdims=False), blocks)
        first = 1 + xs["layer"] * (H + 1)
        # One pass over the deltas computed so far serves all of this layer's slots; the MLP slot
        # then adds this layer's heads, which are not in the buffer yet.
        read_SlotsxNxPxD = jnp.einsum("sv,snpd->vnpd", xs["clean_w"], d_SxNxPxD)
        attn_in = read_SlotsxNxPxD[: 3 * H] + corr_resid_NxPxD
        if "taps" in xs:
            attn_in = attn_in + xs["taps"][: 3 * H]
        z_heads = attention_layer(attn_in, p)
        corr_heads = jax.lax.dynamic_slice_in_dim(corrupted, first, H, axis=0)
        corr_resid_NxPxD = corr_resid_NxPxD + _sum_first_axis(corr_heads) + xs["b_o"]
        d_heads = z_heads - corr_heads
        mlp_in = read_SlotsxNxPxD[3 * H] + jnp.einsum("h,hnpd->npd", xs["heads_to_mlp"], d_heads) + corr_resid_NxPxD
        if "taps" in xs:
            mlp_in = mlp_in + xs["taps"][3 * H]
        corr_mlp = jax.lax.dynamic_index_in_dim(corrupted, first + H, keepdims=False)
        d_mlp = _mlp(cfg, p, mlp_in) - corr_mlp
        new_HplusOnexNxPxD = jnp.concatenate([d_heads, d_mlp[None]], 0)
        d_SxNxPxD = jax.lax.dynamic_update_slice_in_dim(d_SxNxPxD, new_HplusOnexNxPxD, first, axis=0)
        return (d_SxNxPxD, corr_resid_NxPxD + corr_mlp), None

    xs = {
        "layer": jnp.arange(L),
        "clean_w": clean_w_SxT[:, : L * slots].reshape(S, L, slots).transpose(1, 0, 2),
        "b_o": b_o_LxD[:, None, None],
        "heads_to_mlp": heads_to_mlp_LxH,
    }
    if taps_LxSlotsxNxPxD is not None:
        xs["taps"] = taps_LxSlotsxNxPxD
    # Layers run in a few groups, each over a buffer that holds only the sources computed by the
    # group's end: the mixing products skip most of the not-yet-computed (zero) rows.
    delta_SxNxPxD, corr_resid = (x_NxPxD - corrupted[0])[None], corrupted[0]
    bounds = np.linspace(0, L, min(L, _MIX_GROUPS) + 1).round().astype(int)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = 1 + int(stop) * (H + 1)
        delta_SxNxPxD = jnp.concatenate([delta_SxNxPxD, jnp.zeros((rows - delta_SxNxPxD.shape[0], N, P, D), dtype)])
        xs_group = jax.tree.map(lambda a, start=start, stop=stop: a[start:stop], xs)
        xs_group["clean_w"] = xs_group["clean_w"][:, :rows]
        (delta_SxNxPxD, corr_resid), _ = jax.lax.scan(layer, (delta_SxNxPxD, corr_resid), xs_group)

    delta_for_logits, resid_final = delta_SxNxPxD, corr_resid
    if logit_positions is not None:
        delta_for_logits = jax.vmap(_at_positions, in_axes=(0, None))(delta_SxNxPxD, logit_positions)
        resid_final = _at_positions(resid_final, logit_positions)
    logits_in = jnp.tensordot(clean_w_SxT[:, -1], delta_for_logits, axes=1) + resid_final
    if tap_logits is not None:
        logits_in = logits_in + (tap_logits if logit_positions is None else _at_positions(tap_logits, logit_positions))
    return unembed(cfg, params, logits_in), delta_SxNxPxD + corrupted


def _sum_first_axis(x: jax.Array) -> jax.Array:
    """Σ over axis 0 as a contraction (XLA:CPU reduces leading axes ~50x slower than it contracts)."""
    return jnp.tensordot(jnp.ones(x.shape[0], x.dtype), x, axes=1)


def _dense_mask(graph, edge_mask, dtype) -> jax.Array:
    edge_mask = jnp.asarray(edge_mask, dtype)
    if edge_mask.shape == (graph.n_src, graph.n_dst):
        return edge_mask
    if edge_mask.shape == (graph.n_edges,):
        return jnp.zeros((graph.n_src, graph.n_dst), dtype).at[graph.edge_src, graph.edge_dst].set(edge_mask)
    raise ValueError(
        f"edge_mask must be dense [{graph.n_src}, {graph.n_dst}] or flat [{graph.n_edges}], got {edge_mask.shape}"
    )
