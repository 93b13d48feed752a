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
    L, H, D, Dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    N, P = tokens.shape
    dtype = params["tok_embed"].dtype

    def total(taps, record):
        ivs = (taps,) if replace is None else (replace, taps)
        run = trace(
            cfg, params, tokens, attention_mask, ivs,
            input_embeds=input_embeds, logit_positions=logit_positions, record=record,
        )  # fmt: skip
        return objective(unembed(cfg, params, run.final)), (run.nodes, run.pre)

    nodes_record = ("nodes",) if with_nodes else ()
    if cfg.qk_norm == "all":  # a slot's q/k norm reads every head's projection of its input: tap the inputs
        grad, (nodes, _) = jax.grad(total, has_aux=True)(
            Taps(jnp.zeros((cfg.graph.n_dst, N, P, D), dtype)), nodes_record
        )
        return grad.slots, nodes
    zeros = ProjectionTaps(
        jnp.zeros((L, 3 * H, N, P, Dh), dtype), jnp.zeros((L, N, P, D), dtype), jnp.zeros((N, P, D), dtype)
    )
    grad, (nodes, pre_LxNxPxD) = jax.grad(total, has_aux=True)(zeros, ("pre",) + nodes_record)

    def attention_slots(p, pre_NxPxD, g_proj_3HxNxPxDh):
        g_normed = jnp.einsum("snpe,sde->snpd", g_proj_3HxNxPxDh, slot_weights(cfg, p)[0])
        return norm_pullback(cfg, p["ln1"], pre_NxPxD, g_normed) if cfg.pre_norms else g_normed

    g_attn_Lx3HxNxPxD = jax.vmap(attention_slots)(params["blocks"], pre_LxNxPxD, grad.qkv)
    per_layer = jnp.concatenate([g_attn_Lx3HxNxPxD, grad.mlp[:, None]], 1)
    return jnp.concatenate([per_layer.reshape(-1, N, P, D), grad.logits[None]], 0), nodes
