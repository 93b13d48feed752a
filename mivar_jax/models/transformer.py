"""The decoder's forward passes: the plain one and the graph form.

One architecture covers GPT-2 and the Llama family: pre-norm sequential blocks, each an
attention layer then an MLP, with LayerNorm or RMSNorm, learned positions or RoPE, GELU or
SwiGLU MLPs, optional biases and grouped-query attention (parameters: ``params.py``; sublayers:
``layers.py``). The forward passes ``lax.scan`` over the stacked layers. Shapes (names end in their axes, nanodo style):
N inputs, P positions, D model width, H query heads, K key/value heads, E head width (d_head),
F MLP width, V vocabulary, L layers, S source nodes, T destination slots.

Node outputs (the graph's sources) are source-major ``[S, N, P, D]``:
``input`` = token (+ position) embeddings; a head's output = its residual write after W_O
without the shared output bias b_O; an MLP's output = its residual write (with its output bias).
Input-independent constants (the b_O of each layer) are not nodes: every destination reads them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import (
    at_positions,
    attend,
    block,
    expand_kv,
    mlp,
    norm_pullback,
    output_bias,
    prepare,
    put_window,
    qkv,
    slot_weights,
    sum_first_axis,
    take_window,
    unembed,
)
from mivar_jax.models.params import Params

_MIX_GROUPS = 4  # scans of the mixing-mode forward (more: less mixing work, longer compiles)


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
    attention_mask, positions, x = prepare(cfg, params, tokens, attention_mask, input_embeds)

    def layer(x, p):
        return block(cfg, p, x, positions, attention_mask), None

    x, _ = jax.lax.scan(layer, x, params["blocks"])
    return unembed(cfg, params, at_positions(x, logit_positions))


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
    replace: tuple[Float[Array, "S N P D"], Float[Array, " S"]] | None = None,
    window: tuple[Int[Array, ""] | Int[Array, " N"], Float[Array, "L K N P E"], Float[Array, "L K N P E"]]
    | None = None,
) -> tuple[jax.Array, Float[Array, "S N P D"]]:
    """The graph-form forward: every destination slot reads its own input.

        in_v = Σ_u valid(u,v) · (M[u,v] · z_u + (1 − M[u,v]) · z̃_u) + b_v + tap_v

    z_u are this run's node outputs, z̃_u = ``corrupted`` (the corrupted run's node outputs, or
    zeros, or means; broadcast over N and P allowed), M = ``edge_mask`` (real-valued; dense
    [S, T] or flat [E] in the Graph's edge order; 1 = clean, 0 = corrupted), b_v the output
    biases upstream of v (constants, always present), ``tap_v`` an optional additive term (its
    gradient is ∂metric/∂in_v). With ``edge_mask=None`` every slot reads the clean residual
    stream (plus its tap) and ``corrupted`` is unused; there, ``replace = (values, weights)``
    blends node outputs, z_u ← z_u + w_u (values_u − z_u) (w_u = 1 fixes a node's output, and no
    gradient flows through its own computation: used by EAP-IG on activations).

    ``window = (start, keys, values)`` (mixing mode) computes only the W = ``corrupted.shape[2]``
    positions from ``start`` on (one start for all inputs, or one per input [N]), reading the
    earlier positions' keys and values from another run's caches [L, K, N, P, E] (after RoPE):
    exact when every slot's input before ``start`` is that run's residual stream, as with
    counterfactual patching of prompts that agree before ``start`` and the clean run's caches.
    Node outputs and ``corrupted`` then cover the window; ``logit_positions`` stay absolute
    (they must lie in the window).

    Returns ``(logits, node_outputs)``: logits [N, P, V] (or [N, V] at ``logit_positions``) and
    node outputs [S, N, P, D]. Jit-able (cfg static), vmap-able over masks, taps and inputs,
    differentiable w.r.t. ``edge_mask``, ``taps``, ``corrupted`` and ``input_embeds``.
    """
    graph = cfg.graph
    L, H, D, S, T = cfg.n_layers, cfg.n_heads, cfg.d_model, graph.n_src, graph.n_dst
    slots = graph.slots_per_layer
    attention_mask, positions, x_NxPxD = prepare(cfg, params, tokens, attention_mask, input_embeds)
    N, P = x_NxPxD.shape[:2]
    dtype = x_NxPxD.dtype
    blocks = params["blocks"]
    b_o_LxD = output_bias(cfg, blocks, dtype)

    if taps is not None and taps.shape != (T, N, P, D):
        raise ValueError(f"taps must have shape {(T, N, P, D)} (slots, inputs, positions, width), got {taps.shape}")
    taps_LxSlotsxNxPxD = None if taps is None else taps[: L * slots].reshape(L, slots, N, P, D)
    tap_logits = None if taps is None else taps[-1]

    window_start = 0
    if window is not None:
        if edge_mask is None or taps is not None:
            raise ValueError("`window` applies to the mixing mode (edge_mask given, no taps) only")
        if corrupted is None or corrupted.ndim != 4:
            raise ValueError("`window` needs `corrupted` node outputs [S, N, W, D] over the window")
        window_start, keys_LxKxNxPxE, values_LxKxNxPxE = window
        P = corrupted.shape[2]  # the window's width from here on
        positions = take_window(positions, window_start, P, axis=1)
        x_NxPxD = take_window(x_NxPxD, window_start, P, axis=1)
        if logit_positions is not None:
            logit_positions = logit_positions - window_start

    def attention_layer(qkv_in, p, layer):
        """``qkv_in``: shared [N, P, D] or stacked per-slot inputs [3H, N, P, D]."""
        q, k, v = qkv(cfg, p, qkv_in, positions)
        if window is not None:  # this window's keys and values over the cached run's
            k, v = (
                put_window(expand_kv(cfg, cache[layer]), new, window_start, axis=2)
                for cache, new in ((keys_LxKxNxPxE, k), (values_LxKxNxPxE, v))
            )
        o = attend(cfg, q, k, v, attention_mask, q_offset=window_start)
        return jnp.einsum("hnqe,hed->hnqd", o, p["w_o"])  # per-head residual writes, no b_O

    if edge_mask is None:
        # Residual mode: every slot reads the clean residual stream plus its own tap.
        slot_taps = None if taps_LxSlotsxNxPxD is None else {"slots": taps_LxSlotsxNxPxD}
        x_final, nodes_SxNxPxD, _ = _residual_run(
            cfg, params, x_NxPxD, positions, attention_mask, taps=slot_taps, replace=replace
        )
        logits_in = x_final if tap_logits is None else x_final + tap_logits
        return unembed(cfg, params, at_positions(logits_in, logit_positions)), nodes_SxNxPxD

    if replace is not None:
        raise ValueError("`replace` applies to the residual mode (edge_mask=None) only")
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
        z_heads = attention_layer(attn_in, p, xs["layer"])
        corr_heads = jax.lax.dynamic_slice_in_dim(corrupted, first, H, axis=0)
        corr_resid_NxPxD = corr_resid_NxPxD + sum_first_axis(corr_heads) + xs["b_o"]
        d_heads = z_heads - corr_heads
        mlp_in = read_SlotsxNxPxD[3 * H] + jnp.einsum("h,hnpd->npd", xs["heads_to_mlp"], d_heads) + corr_resid_NxPxD
        if "taps" in xs:
            mlp_in = mlp_in + xs["taps"][3 * H]
        corr_mlp = jax.lax.dynamic_index_in_dim(corrupted, first + H, keepdims=False)
        d_mlp = mlp(cfg, p, mlp_in) - corr_mlp
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
    for first_layer, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = 1 + int(stop) * (H + 1)
        delta_SxNxPxD = jnp.concatenate([delta_SxNxPxD, jnp.zeros((rows - delta_SxNxPxD.shape[0], N, P, D), dtype)])
        xs_group = jax.tree.map(lambda a, first_layer=first_layer, stop=stop: a[first_layer:stop], xs)
        xs_group["clean_w"] = xs_group["clean_w"][:, :rows]
        (delta_SxNxPxD, corr_resid), _ = jax.lax.scan(layer, (delta_SxNxPxD, corr_resid), xs_group)

    delta_for_logits, resid_final = delta_SxNxPxD, corr_resid
    if logit_positions is not None:
        delta_for_logits = jax.vmap(at_positions, in_axes=(0, None))(delta_SxNxPxD, logit_positions)
        resid_final = at_positions(resid_final, logit_positions)
    logits_in = jnp.tensordot(clean_w_SxT[:, -1], delta_for_logits, axes=1) + resid_final
    if tap_logits is not None:
        logits_in = logits_in + (tap_logits if logit_positions is None else at_positions(tap_logits, logit_positions))
    return unembed(cfg, params, logits_in), delta_SxNxPxD + corrupted


def _residual_run(
    cfg: ModelConfig,
    params: Params,
    x_NxPxD: Float[Array, "N P D"],
    positions: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"],
    *,
    taps: dict | None = None,
    replace: tuple[Float[Array, "S N P D"], Float[Array, " S"]] | None = None,
    per_head: bool = True,
) -> tuple[Float[Array, "N P D"], Float[Array, "S N P D"] | None, Float[Array, "L N P D"]]:
    """The residual-mode layers: every slot reads the one residual stream (plus its tap).

    ``taps`` holds either ``slots`` [L, slots, N, P, D] (added to each slot's input: the q/k/v
    slots then run as 3H separate inputs) or ``proj`` [L, 3H, N, P, E] (added to the q/k/v
    projections, the input shared) with ``mlp`` [L, N, P, D] (added to the MLP's input).
    ``replace`` blends node outputs (see ``graph_forward``). Returns the final stream, the node
    outputs (None with ``per_head=False``: heads' writes are then summed inside one contraction)
    and the stream before each layer."""
    L, H, D = cfg.n_layers, cfg.n_heads, cfg.d_model
    N, P = x_NxPxD.shape[:2]
    dtype = x_NxPxD.dtype
    blocks = params["blocks"]
    if replace is not None and not per_head:
        raise ValueError("`replace` needs per-head outputs")

    def blend(z, xs, rows):
        if "replace_w" not in xs:
            return z
        w = xs["replace_w"][rows].reshape((-1,) + (1,) * (z.ndim - 1))
        return z + w.astype(z.dtype) * (xs["replace_v"][rows] - z)

    def layer(x, xs):
        p, t = xs["p"], xs.get("taps", {})
        attn_in = x[None] + t["slots"][: 3 * H] if "slots" in t else x
        q, k, v = qkv(cfg, p, attn_in, positions, t.get("proj"))
        o = attend(cfg, q, k, v, attention_mask)
        if per_head:
            z_heads = blend(jnp.einsum("hnqe,hed->hnqd", o, p["w_o"]), xs, slice(0, H))
            x_mid = x + sum_first_axis(z_heads) + xs["b_o"]
        else:
            x_mid = x + jnp.einsum("hnqe,hed->nqd", o, p["w_o"]) + xs["b_o"]
        mlp_in = x_mid
        if "slots" in t:
            mlp_in = x_mid + t["slots"][3 * H]
        elif "mlp" in t:
            mlp_in = x_mid + t["mlp"]
        z_mlp = blend(mlp(cfg, p, mlp_in)[None], xs, slice(H, H + 1))[0]
        nodes = jnp.concatenate([z_heads, z_mlp[None]], 0) if per_head else None
        return x_mid + z_mlp, (nodes, x)

    xs = {"p": blocks, "b_o": output_bias(cfg, blocks, dtype)}
    if taps is not None:
        xs["taps"] = taps
    if replace is not None:
        S = cfg.graph.n_src
        values_SxNxPxD, weights_S = replace
        values_SxNxPxD = jnp.broadcast_to(values_SxNxPxD.astype(dtype), (S, N, P, D))
        x_NxPxD = x_NxPxD + weights_S[0].astype(dtype) * (values_SxNxPxD[0] - x_NxPxD)
        xs["replace_v"] = values_SxNxPxD[1:].reshape(L, H + 1, N, P, D)
        xs["replace_w"] = jnp.asarray(weights_S)[1:].reshape(L, H + 1)
    x_final, (z_LxH1xNxPxD, pre_LxNxPxD) = jax.lax.scan(layer, x_NxPxD, xs)
    nodes_SxNxPxD = None
    if per_head:
        nodes_SxNxPxD = jnp.concatenate([x_NxPxD[None], z_LxH1xNxPxD.reshape(L * (H + 1), N, P, D)], 0)
    return x_final, nodes_SxNxPxD, pre_LxNxPxD


# ================================================================================ slot gradients
def slot_gradients(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None,
    objective: Callable[[jax.Array], Float[Array, ""]],
    *,
    input_embeds: Float[Array, "N P D"] | None = None,
    logit_positions: Int[Array, " N"] | None = None,
    replace: tuple[Float[Array, "S N P D"], Float[Array, " S"]] | None = None,
    with_nodes: bool = True,
) -> tuple[Float[Array, "T N P D"], Float[Array, "S N P D"] | None]:
    """∂objective/∂in_v at every destination slot v of one residual-mode run: what a zero tap at
    v's input (``graph_forward(taps=…)``) would receive, for the cost of about one plain
    forward+backward. ``objective`` maps the logits ([N, P, V], or [N, V] at ``logit_positions``)
    to a scalar.

    The run keeps one shared q/k/v input per layer and taps the projections instead (keys and
    values ungrouped per query head); a q/k/v slot's gradient is then pulled back through its
    projection and the layer's input norm, which is linear in the cotangent:
    ∂/∂in_v = J_norm(x_l)ᵀ (∂/∂(h W_v) W_vᵀ). MLP and logits slots read their taps directly.
    Returns the gradients [T, N, P, D] and the run's node outputs (None with ``with_nodes=False``,
    which sums heads inside one contraction)."""
    L, H, D, E = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    attention_mask, positions, x_NxPxD = prepare(cfg, params, tokens, attention_mask, input_embeds)
    N, P = x_NxPxD.shape[:2]
    dtype = x_NxPxD.dtype
    zeros = {
        "proj": jnp.zeros((L, 3 * H, N, P, E), dtype),
        "mlp": jnp.zeros((L, N, P, D), dtype),
        "logits": jnp.zeros((N, P, D), dtype),
    }

    def total(taps):
        layer_taps = {"proj": taps["proj"], "mlp": taps["mlp"]}
        x_final, nodes, pre = _residual_run(
            cfg, params, x_NxPxD, positions, attention_mask, taps=layer_taps, replace=replace, per_head=with_nodes
        )
        logits = unembed(cfg, params, at_positions(x_final + taps["logits"], logit_positions))
        return objective(logits), (nodes, pre)

    grad, (nodes, pre_LxNxPxD) = jax.grad(total, has_aux=True)(zeros)

    def attention_slots(p, pre_NxPxD, g_proj_3HxNxPxE):
        g_normed = jnp.einsum("snpe,sde->snpd", g_proj_3HxNxPxE, slot_weights(cfg, p))
        return norm_pullback(cfg, p["ln1"], pre_NxPxD, g_normed)

    g_attn_Lx3HxNxPxD = jax.vmap(attention_slots)(params["blocks"], pre_LxNxPxD, grad["proj"])
    per_layer = jnp.concatenate([g_attn_Lx3HxNxPxD, grad["mlp"][:, None]], 1)
    return jnp.concatenate([per_layer.reshape(-1, N, P, D), grad["logits"][None]], 0), nodes


def _dense_mask(graph, edge_mask, dtype) -> jax.Array:
    edge_mask = jnp.asarray(edge_mask, dtype)
    if edge_mask.shape == (graph.n_src, graph.n_dst):
        return edge_mask
    if edge_mask.shape == (graph.n_edges,):
        return jnp.zeros((graph.n_src, graph.n_dst), dtype).at[graph.edge_src, graph.edge_dst].set(edge_mask)
    raise ValueError(
        f"edge_mask must be dense [{graph.n_src}, {graph.n_dst}] or flat [{graph.n_edges}], got {edge_mask.shape}"
    )
