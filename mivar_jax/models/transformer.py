"""The decoder, written once: ``block`` (one layer) and ``forward`` (embeddings → layers → logits).

One architecture covers every supported family (``ModelConfig``): pre-norm blocks, each an
attention layer then an MLP (or both reading the layer's input: parallel), with LayerNorm or
RMSNorm, learned positions or (partial) RoPE, optional QK-norm and sliding windows, GELU or
SwiGLU MLPs, optional biases and grouped-query attention (parameters: ``params.py``; sublayers:
``layers.py``). What differs between the runs the engine makes (plain, graph form with an edge
mask, gradient taps, replaced node outputs, windows from clean caches) is an intervention
(``interventions.py``) passed to the one forward, never a copy of the layer.

Shapes: the letters of docs/architecture.md ("Shapes"; names end in their axes, nanodo style),
checked at run time under pytest (jaxtyping + beartype, ``tests/conftest.py``).

Node outputs (the graph's sources) are source-major ``[S, N, P, D]``: ``input`` = token (+ position)
embeddings; a head's output = its residual write after W_O without the shared output bias b_O; an
MLP's output = its residual write (with its output bias). Input-independent constants (the b_O of
each layer) are not nodes: every destination reads them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import Intervention, Residual, Stream, split
from mivar_jax.models.layers import (
    at_positions,
    attend,
    embed,
    mlp,
    position_ids,
    qkv,
    rotate,
    span,
    sum_first_axis,
    unembed,
)  # fmt: skip
from mivar_jax.models.params import Params, layer_params


def block(
    cfg: ModelConfig,
    p: Params,
    layer: Int[Array, ""],
    state: Any,
    stream: Stream,
    modifiers: tuple[Intervention, ...],
    lx: tuple,
    positions: Int[Array, "N W"],
    attention_mask: Int[ArrayLike, "N P"],
    query: Int[Array, " N"] | None = None,
):
    """The decoder layer ``layer`` (a traced index; ``p`` its parameters): x → x + Σ_h head_h(norm₁ x)
    + b_O → x + MLP(norm₂ x), or with ``parallel_attn_mlp`` x → x + Σ_h head_h(norm₁ x) + b_O + MLP(norm₂ x).

    ``stream`` says what the sublayers read from ``state`` and how their outputs are written back;
    ``modifiers`` change values at the hook points (``interventions``); ``lx`` holds the layer's
    slice of each one's per-layer arrays (stream first). ``query`` [N] (positions in the stream)
    computes the layer's output at one position per input only (the last layer of a patched run).
    With ``post_norms`` the heads' writes are their shares of the normalised attention write
    (``layers.head_writes``). Returns the new state and the layer's record ``{"heads", "mlp",
    "pre", "attn"}`` (``attn``: Σ_h z_h before the post-norm; what is not asked for is dropped)."""
    lx_stream, mods = lx[0], list(zip(modifiers, lx[1:], strict=True))
    per_head = stream.per_head or any(m.needs_per_head for m in modifiers)
    heads = stream.heads(lx_stream)
    pre = state
    state, a = stream.read_attention(state, lx_stream)
    for m, m_lx in mods:
        a = m.attention_input(a, m_lx)
    q, k, v = qkv(cfg, p, a, heads)
    for m, m_lx in mods:
        q, k, v = m.projections(cfg, q, k, v, m_lx)
    q, k = rotate(cfg, p, q, k, positions, layer)
    offset = 0
    for m, m_lx in mods:
        k, v = m.keys_values(cfg, k, v, m_lx, heads)
        offset = offset + m.query_offset
    if query is not None:
        q = jnp.take_along_axis(q, query[None, :, None, None], axis=2)  # [H, N, 1, Dh]
        state, offset = stream.at(state, query), offset + query
    if cfg.parallel_attn_mlp:  # the MLP reads the layer's input, before its heads are added
        a_mlp = stream.read_mlp(state, lx_stream)
    o = attend(cfg, q, k, v, attention_mask, q_offset=offset, span=span(cfg, layer))
    w_o = p["w_o"] if heads is None else p["w_o"][heads]
    z_heads = jnp.einsum("hnqe,hed->hnqd" if per_head else "hnqe,hed->nqd", o, w_o)
    attn = sum_first_axis(z_heads) if per_head else z_heads  # before any post-norm
    z_heads = stream.head_writes(cfg, p, z_heads)
    for m, m_lx in mods:
        z_heads = m.head_outputs(z_heads, m_lx)
    state = stream.add_heads(state, z_heads, p["b_o"] if cfg.o_bias else 0.0, lx_stream)
    a = a_mlp if cfg.parallel_attn_mlp else stream.read_mlp(state, lx_stream)
    for m, m_lx in mods:
        a = m.mlp_input(a, m_lx)
    z_mlp = mlp(cfg, p, a)
    for m, m_lx in mods:
        z_mlp = m.mlp_output(z_mlp, m_lx)
    record = {"heads": z_heads, "mlp": z_mlp, "pre": pre, "attn": attn}
    return stream.add_mlp(state, z_mlp, lx_stream), record


class Trace(NamedTuple):
    """A run: the residual stream the logits read (at the logit positions), node outputs
    [S, N, P, D] (None unless recorded), the stream before each layer [L, N, P, D] and each
    layer's Σ_h z_h before any post-norm [L, N, P, D] (idem)."""

    final: Float[Array, "N P D"] | Float[Array, "N D"]
    nodes: Float[Array, "S N P D"] | None
    pre: Float[Array, "L N P D"] | None
    attn: Float[Array, "L N P D"] | None = None


def trace(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[ArrayLike, "N P"],
    attention_mask: Int[ArrayLike, "N P"] | None = None,
    intervention: Intervention | tuple[Intervention, ...] | None = None,
    *,
    input_embeds: Float[ArrayLike, "N P D"] | None = None,
    logit_positions: Int[ArrayLike, " N"] | None = None,
    record: tuple[str, ...] = (),
    start_at: tuple[int, Float[Array, "N P D"]] | None = None,
) -> Trace:
    """The layers of one run under ``intervention`` (default: the plain model). ``record``:
    ``"nodes"``, ``"pre"`` and/or ``"attn"`` (only for the default residual stream; an EdgeMix run always has
    its node outputs). ``input_embeds`` replaces the ``input`` node's output.

    ``start_at=(l, x_l)`` (default stream, no node outputs): the run starts at layer ``l`` from the
    stream ``x_l`` [N, P, D] (the stream before layer l of another run of the same inputs, e.g.
    its ``record=("pre",)``), layers before l are not computed and records cover layers l…."""
    stream, modifiers = split(intervention)
    if start_at is not None and (stream is not None or "nodes" in record):
        raise ValueError("start_at runs the default residual stream without node outputs")
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, jnp.int32)
    positions = position_ids(attention_mask)
    x = (
        embed(cfg, params, tokens, positions)
        if input_embeds is None
        else input_embeds.astype(params["tok_embed"].dtype)
    )
    for m in modifiers:
        if hasattr(m, "check"):
            m.check(cfg, *x.shape[:2])
        x, positions = m.embeddings(x), m.positions(positions)
        logit_positions = m.logit_positions(logit_positions)
    if stream is None:
        stream = Residual(per_head="nodes" in record, record=record)
    stream = stream.bind(cfg, x)
    state = stream.init(x)
    layer_arrays = tuple(m.layer_arrays(cfg) for m in modifiers)
    wanted = (("heads", "mlp") if "nodes" in record else ()) + tuple(k for k in ("pre", "attn") if k in record)

    def layer(state, xs):
        i, p, lx = xs
        p = layer_params(params, i) if p is None else p
        state, rec = block(cfg, p, i, state, stream, modifiers, lx, positions, attention_mask)
        return state, {k: rec[k] for k in wanted}

    records = []
    groups = stream.layer_groups(cfg)
    if start_at is not None:
        groups, state = [(start_at[0], cfg.n_layers)], stream.init(start_at[1].astype(x.dtype))
    for first, stop in groups:
        state = stream.grow(cfg, state, stop)
        arrays = jax.tree.map(lambda a, i=first, j=stop: a[i:j], layer_arrays)
        # all layers: scan over the stacked weights; a group of them: index them inside the scan
        # (a slice of the stack would be a copy of the group's weights)
        blocks = params["blocks"] if (first, stop) == (0, cfg.n_layers) else None
        xs = (jnp.arange(first, stop), blocks, (stream.group_arrays(cfg, first, stop),) + arrays)
        state, rec = jax.lax.scan(layer, state, xs)
        records.append(rec)
    records = jax.tree.map(lambda *a: jnp.concatenate(a), *records) if len(records) > 1 else records[0]
    final, nodes = stream.final(cfg, state, x, records, logit_positions)
    for m in modifiers:
        final = m.logits_input(final, logit_positions)
    return Trace(final, nodes, records.get("pre"), records.get("attn"))


def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: Int[ArrayLike, "N P"],
    attention_mask: Int[ArrayLike, "N P"] | None = None,
    intervention: Intervention | tuple[Intervention, ...] | None = None,
    *,
    input_embeds: Float[ArrayLike, "N P D"] | None = None,
    logit_positions: Int[ArrayLike, " N"] | None = None,
    nodes: bool = False,
):
    """The forward pass: logits [N, P, V] (or [N, V] at ``logit_positions``), and with ``nodes``
    also the node outputs [S, N, P, D] (over the window with a ``Window``).

    ``intervention``: None (the plain model), one intervention or a tuple of them
    (``interventions``). Jit-able (cfg static), vmap-able over interventions and inputs,
    differentiable w.r.t. edge masks, taps, reference values and ``input_embeds``."""
    run = trace(
        cfg, params, tokens, attention_mask, intervention,
        input_embeds=input_embeds, logit_positions=logit_positions, record=("nodes",) if nodes else (),
    )  # fmt: skip
    logits = unembed(cfg, params, run.final)
    return (logits, run.nodes) if nodes else logits


__all__ = ["Trace", "block", "forward", "trace", "at_positions"]
