"""Slot gradients: ∂objective/∂in_v at every destination slot of one run, for about the cost of one
plain forward+backward."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import ProjectionTaps, Replace, Taps
from mivar_jax.models.layers import norm_pullback, slot_weights, unembed
from mivar_jax.models.params import Params
from mivar_jax.models.transformer import trace


def slot_gradients(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None,
    objective: Callable[[jax.Array], Float[Array, ""]],
    *,
    input_embeds: Float[Array, "N P D"] | None = None,
    logit_positions: Int[Array, " N"] | None = None,
    replace: Replace | None = None,
    with_nodes: bool = True,
) -> tuple[Float[Array, "T N P D"], Float[Array, "S N P D"] | None]:
    """∂objective/∂in_v at every destination slot v of one run (optionally under ``replace``): what
    a zero ``Taps`` at v's input would receive. ``objective`` maps the logits ([N, P, V], or [N, V]
    at ``logit_positions``) to a scalar.

    The run keeps one shared q/k/v input per layer and taps the projections instead
    (``ProjectionTaps``: keys and values ungrouped per query head); a q/k/v slot's gradient is then
    pulled back through its projection and the layer's input norm, which is linear in the
    cotangent: ∂/∂in_v = J_norm(x_l)ᵀ (∂/∂(h W_v) W_vᵀ). MLP and logits slots read their taps
    directly. With ``qk_norm="all"`` (a query's norm reads every head's projection of its input)
    the run taps the slot inputs themselves (``Taps``: per-slot q/k/v inputs, slower). Returns the
    gradients [T, N, P, D] and the run's node outputs (None with ``with_nodes=False``, which sums
    heads inside one contraction)."""
    slots, nodes, _ = _gradients(
        cfg, params, tokens, attention_mask, objective, input_embeds, logit_positions, replace, with_nodes, None
    )
    return slots, nodes


def suffix_gradients(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None,
    objective: Callable[[jax.Array], Float[Array, ""]],
    start_at: tuple[int, Float[Array, "N P D"]],
    *,
    input_embeds: Float[Array, "N P D"] | None = None,
    logit_positions: Int[Array, " N"] | None = None,
    replace: Replace | None = None,
) -> tuple[Float[Array, "Tl N P D"], Float[Array, "N P D"]]:
    """``slot_gradients`` of a run that starts at layer l = ``start_at[0]`` from the stream x_l =
    ``start_at[1]`` (``trace``'s ``start_at``), for the cost of layers l…: the gradients at the
    slots from layer l on (the last Tl = T − l·(3H+1)) and ∂objective/∂x_l. The slots before l
    receive ``stream_pullback`` of that cotangent: the two make the whole run's gradients when x_l
    is the whole run's stream before l."""
    slots, _, d_stream = _gradients(
        cfg, params, tokens, attention_mask, objective, input_embeds, logit_positions, replace, False, start_at
    )
    return slots, d_stream


def stream_pullback(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[Array, "N P"],
    attention_mask: Int[Array, "N P"] | None,
    *,
    input_embeds: Float[Array, "N P D"] | None = None,
) -> tuple[Float[Array, "L N P D"], Callable[[Float[Array, "L N P D"]], Float[Array, "T N P D"]]]:
    """The stream before each layer ``pre`` of one run (one forward), and the map from cotangents
    c [L, N, P, D] on it to Σ_l ∂⟨c_l, pre_l⟩/∂in_v at every slot v (one backward per call)."""
    zeros = _zero_taps(cfg, *tokens.shape, params["tok_embed"].dtype)

    def stream(taps):
        return trace(cfg, params, tokens, attention_mask, taps, input_embeds=input_embeds, record=("pre",)).pre

    pre_LxNxPxD, vjp = jax.vjp(stream, zeros)
    return pre_LxNxPxD, lambda c_LxNxPxD: _to_slots(cfg, params, vjp(c_LxNxPxD)[0], pre_LxNxPxD)


def _zero_taps(cfg: ModelConfig, N: int, P: int, dtype) -> Taps | ProjectionTaps:
    """Zero taps: at the projections (``ProjectionTaps``), or at the slot inputs themselves with
    ``qk_norm="all"`` (a query's norm reads every head's projection of its input)."""
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    if cfg.qk_norm == "all":
        return Taps(jnp.zeros((cfg.graph.n_dst, N, P, D), dtype))
    zeros = jnp.zeros((L, 3 * H, N, P, Dh), dtype), jnp.zeros((L, N, P, D), dtype), jnp.zeros((N, P, D), dtype)
    return ProjectionTaps(*zeros)


def _to_slots(cfg: ModelConfig, params: Params, grad, pre_LxNxPxD, first: int = 0) -> Float[Array, "Tl N P D"]:
    """Gradients at the taps → at the slot inputs from layer ``first`` on [T − first·(3H+1), N, P, D]:
    a q/k/v slot's is pulled back through its projection and the layer's input norm (linear in the
    cotangent, at the run's stream ``pre`` of layers ``first``…): ∂/∂in_v = J_norm(x_l)ᵀ (∂/∂(h W_v)
    W_vᵀ). MLP and logits slots read their taps directly."""
    if isinstance(grad, Taps):
        return grad.slots[first * cfg.graph.slots_per_layer :]
    N, P, D = pre_LxNxPxD.shape[1:]

    def attention_slots(p, pre_NxPxD, g_proj_3HxNxPxDh):
        g_normed = jnp.einsum("snpe,sde->snpd", g_proj_3HxNxPxDh, slot_weights(cfg, p)[0])
        return norm_pullback(cfg, p["ln1"], pre_NxPxD, g_normed) if cfg.pre_norms else g_normed

    blocks = jax.tree.map(lambda a: a[first:], params["blocks"])
    g_attn_Lx3HxNxPxD = jax.vmap(attention_slots)(blocks, pre_LxNxPxD, grad.qkv[first:])
    per_layer = jnp.concatenate([g_attn_Lx3HxNxPxD, grad.mlp[first:, None]], 1).reshape(-1, N, P, D)
    return jnp.concatenate([per_layer, grad.logits[None]], 0)


def _gradients(
    cfg, params, tokens, attention_mask, objective, input_embeds, logit_positions, replace, with_nodes, start_at
):
    """(slot gradients, node outputs or None, ∂objective/∂x_l or None) of one run: one forward+backward
    with zero taps (``_zero_taps``), from layer ``start_at[0]`` when given."""
    zeros = _zero_taps(cfg, *tokens.shape, params["tok_embed"].dtype)
    record = (() if isinstance(zeros, Taps) else ("pre",)) + (("nodes",) if with_nodes else ())

    def total(taps, x_start):
        ivs = (taps,) if replace is None else (replace, taps)
        run = trace(
            cfg, params, tokens, attention_mask, ivs, input_embeds=input_embeds, logit_positions=logit_positions,
            record=record, start_at=None if start_at is None else (start_at[0], x_start),
        )  # fmt: skip
        return objective(unembed(cfg, params, run.final)), (run.nodes, run.pre)  # pre: layers from the start

    if start_at is None:
        grad, (nodes, pre_LxNxPxD) = jax.grad(total, has_aux=True)(zeros, None)
        return _to_slots(cfg, params, grad, pre_LxNxPxD), nodes, None
    (grad, d_stream), (nodes, pre_LxNxPxD) = jax.grad(total, argnums=(0, 1), has_aux=True)(zeros, start_at[1])
    return _to_slots(cfg, params, grad, pre_LxNxPxD, start_at[0]), nodes, d_stream
