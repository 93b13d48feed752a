"""Interventions: what a run of the one decoder layer (``transformer.block``) changes.

An intervention is a small pytree passed to ``transformer.forward`` (a tuple of them composes).
Two kinds:

- a **stream** says what each sublayer reads and how node outputs are written back. ``Residual``
  (the plain model: one residual stream; chosen by ``forward`` when none is given) or
  ``EdgeMix(edge_mask, corrupted)`` (the graph form: every destination slot reads its own mix of
  clean and reference node outputs). At most one per run.
- **modifiers** change values at the block's hook points: ``Taps`` (additive terms at every slot's
  input), ``ProjectionTaps`` (additive terms at the q/k/v projections, the MLP and logits inputs:
  the fast form of ``Taps`` for gradients), ``Replace`` (node outputs blended towards given
  values), ``Window`` (only positions [start, start + W) run, earlier keys and values read from
  another run's caches).

The hooks (each the identity unless overridden) are called by ``block`` in this order:
``attention_input`` → ``projections`` → (RoPE) → ``keys_values`` → attention → ``head_outputs`` →
``mlp_input`` → ``mlp_output``; ``forward`` also calls ``embeddings``, ``positions``,
``logit_positions`` and ``logits_input``. ``layer_arrays()`` returns the intervention's per-layer
arrays (leading axis L), sliced for each layer and handed to its hooks as ``lx``.

Shapes: the letters of docs/architecture.md; T destination slots are 3H per layer + 1 MLP (+ logits).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, ArrayLike, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import at_positions, expand_kv, head_writes, put_window, sum_first_axis, take_window

_MIX_GROUPS = 4  # scans of the EdgeMix forward (more: less mixing work, longer compiles)


class Intervention:
    """Identity hooks; subclasses override the ones they change (see the module docstring)."""

    is_stream = False
    needs_per_head = False  # node outputs must be computed head by head (not summed in W_O)
    query_offset: Any = 0

    def layer_arrays(self, cfg: ModelConfig) -> Any:
        return None

    def embeddings(self, x):
        return x

    def positions(self, positions):
        return positions

    def logit_positions(self, logit_positions):
        return logit_positions

    def attention_input(self, a, lx):
        return a

    def projections(self, cfg, q, k, v, lx):
        return q, k, v

    def keys_values(self, cfg, k, v, lx, heads):
        return k, v

    def head_outputs(self, z, lx):
        return z

    def mlp_input(self, a, lx):
        return a

    def mlp_output(self, z, lx):
        return z

    def logits_input(self, x, logit_positions):
        return x


# ================================================================================ streams
class Stream(Intervention):
    """What each sublayer reads and where its output goes; ``block`` threads a ``state`` through
    these hooks (``bind`` first turns the user's description into the running form)."""

    is_stream = True
    per_head = True  # heads' writes one by one (Residual may sum them inside W_O)

    def bind(self, cfg: ModelConfig, x: Float[Array, "N P D"]) -> Stream:
        return self

    def init(self, x):
        return x

    def layer_groups(self, cfg: ModelConfig) -> list[tuple[int, int]]:
        """Consecutive layer ranges, each one ``lax.scan``."""
        return [(0, cfg.n_layers)]

    def group_arrays(self, cfg: ModelConfig, first: int, stop: int) -> Any:
        return None

    def grow(self, cfg: ModelConfig, state, stop: int):
        return state

    def heads(self, lx) -> Int[Array, " heads"] | None:
        """The query heads the layer computes (None: all)."""
        return None

    def at(self, state, query):
        """The state at one position per input (``query`` [N]): [N, 1, D]."""
        return jnp.take_along_axis(state, query[:, None, None], axis=1)

    def read_attention(self, state, lx):
        """(state, the attention input: shared [N, P, D] or per slot [3·heads, N, P, D])."""
        return state, state

    def add_heads(self, state, z, b_o, lx):
        """``z``: per-head writes [heads, N, P, D] (or their sum [N, P, D] where ``per_head`` is off)."""
        return state + (sum_first_axis(z) if z.ndim == 4 else z) + b_o

    def head_writes(self, cfg: ModelConfig, p, z):
        """The heads' writes from their outputs z [heads, N, P, D] (or summed): ``layers.head_writes``."""
        return head_writes(cfg, p, z)

    def read_mlp(self, state, lx):
        return state

    def add_mlp(self, state, z, lx):
        return state + z

    def final(self, cfg: ModelConfig, state, x_embed, records, logit_positions):
        """(the residual stream the logits read, at ``logit_positions``; node outputs [S, N, P, D] or None)."""
        return at_positions(state, logit_positions), None


@struct.dataclass
class Residual(Stream):
    """The plain model: every slot reads the one residual stream x.

    ``per_head``: heads' writes computed one by one (node outputs available) or summed inside
    W_O (cheaper). ``record``: per-layer values the forward returns, ``"nodes"`` (node outputs)
    and/or ``"pre"`` (the stream before each layer)."""

    per_head: bool = struct.field(pytree_node=False, default=False)
    record: tuple[str, ...] = struct.field(pytree_node=False, default=())

    def final(self, cfg, state, x_embed, records, logit_positions):
        nodes = None
        if "nodes" in self.record:
            per_layer = jnp.concatenate([records["heads"], records["mlp"][:, None]], 1)  # [L, H+1, N, P, D]
            nodes = jnp.concatenate([x_embed[None], per_layer.reshape(-1, *x_embed.shape)], 0)
        return at_positions(state, logit_positions), nodes


@struct.dataclass
class EdgeMix(Intervention):
    """The graph form: each destination slot v reads

        in_v = Σ_u valid(u,v) · (M[u,v] · z_u + (1 − M[u,v]) · z̃_u) + b_v

    with z_u this run's node outputs, z̃_u = ``corrupted`` [S, N, P, D] (the reference run's node
    outputs, zeros or means; broadcast over N and P allowed), M = ``edge_mask`` (real-valued,
    dense [S, T] or flat [E] in the Graph's edge order; 1 = clean, 0 = corrupted) and b_v the
    output biases upstream of v. Differentiable in ``edge_mask`` and ``corrupted``."""

    edge_mask: Float[ArrayLike, "S T"] | Float[ArrayLike, " E"]
    corrupted: Float[ArrayLike, "S N P D"]
    is_stream = True

    def bind(self, cfg, x):
        g, c, n, p = cfg.graph, self.corrupted, *x.shape[:2]
        if c.ndim != 4 or c.shape[0] != g.n_src or c.shape[3] != cfg.d_model:
            raise ValueError(
                f"corrupted must have shape [{g.n_src}, N, P, {cfg.d_model}] (broadcastable), got {c.shape}"
            )
        if c.shape[2] not in (1, p):
            raise ValueError(
                f"corrupted node outputs cover {c.shape[2]} positions, the clean tokens {p}: clean and corrupted "
                "prompts of a pair must have the same length"
            )
        if c.shape[1] not in (1, n):
            raise ValueError(f"corrupted has {c.shape[1]} inputs but the clean batch has {n}")
        if jnp.shape(self.edge_mask) not in ((g.n_src, g.n_dst), (g.n_edges,)):
            raise ValueError(
                f"edge_mask must be dense [{g.n_src}, {g.n_dst}] or flat [{g.n_edges}], got {jnp.shape(self.edge_mask)}"
            )
        m = jnp.asarray(self.edge_mask, x.dtype)
        if m.shape == (g.n_edges,):
            m = jnp.zeros((g.n_src, g.n_dst), x.dtype).at[g.edge_src, g.edge_dst].set(m)
        z = jnp.broadcast_to(self.corrupted.astype(x.dtype), (g.n_src, n, p, cfg.d_model))
        return _Mix(jnp.asarray(g.valid, x.dtype) * m, z)


@struct.dataclass
class _Mix(Stream):
    """``EdgeMix`` running, in delta form: with W = valid ⊙ M and d_u = z_u − z̃_u,
    in_v = Σ_u valid(u,v) z̃_u + Σ_u W[u,v] d_u, the first sum being the reference stream where v
    sits (a running sum): one mixing product per layer. Layers run in a few groups, each over a
    buffer of the sources computed by the group's end (the products skip not-yet-computed rows).
    State: deltas so far [rows, N, P, D] and the reference stream (+ biases) [N, P, D]."""

    w: Float[Array, "S T"]  # valid ⊙ M
    z: Float[Array, "S N P D"]  # z̃

    def init(self, x):
        return {"delta": (x - self.z[0])[None], "ref": self.z[0]}

    def layer_groups(self, cfg):
        bounds = np.linspace(0, cfg.n_layers, min(cfg.n_layers, _MIX_GROUPS) + 1).round().astype(int)
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    def grow(self, cfg, state, stop):
        d = state["delta"]
        rows = 1 + stop * (cfg.n_heads + 1)
        return dict(state, delta=jnp.concatenate([d, jnp.zeros((rows - d.shape[0],) + d.shape[1:], d.dtype)]))

    def group_arrays(self, cfg, first, stop):
        """Per layer: its index, the weights from the group's sources into its slots, and from its
        heads into its MLP."""
        H, S, slots = cfg.n_heads, cfg.graph.n_src, cfg.graph.slots_per_layer
        layers = np.arange(first, stop)
        rows = 1 + stop * (H + 1)
        w_LxSxSlots = self.w[:, : cfg.n_layers * slots].reshape(S, cfg.n_layers, slots).transpose(1, 0, 2)
        heads_LxH = 1 + layers[:, None] * (H + 1) + np.arange(H)
        return {
            "layer": jnp.asarray(layers),
            "w": w_LxSxSlots[first:stop, :rows],
            "to_mlp": self.w[heads_LxH, (layers * slots + 3 * H)[:, None]],
        }

    def read_attention(self, state, lx):
        # One pass over the deltas computed so far serves all of this layer's slots; the MLP slot
        # then adds this layer's heads, which are not in the buffer yet.
        reads = jnp.einsum("sv,snpd->vnpd", lx["w"], state["delta"])
        H = lx["to_mlp"].shape[0]
        return dict(state, mlp_read=reads[3 * H]), reads[: 3 * H] + state["ref"]

    def add_heads(self, state, z, b_o, lx):
        H, first = z.shape[0], 1 + lx["layer"] * (z.shape[0] + 1)
        ref_heads = jax.lax.dynamic_slice_in_dim(self.z, first, H, axis=0)
        return dict(state, ref=state["ref"] + sum_first_axis(ref_heads) + b_o, d_heads=z - ref_heads)

    def read_mlp(self, state, lx):
        if "d_heads" not in state:  # parallel attention and MLP: read before this layer's heads
            return state["mlp_read"] + state["ref"]
        return state["mlp_read"] + jnp.einsum("h,hnpd->npd", lx["to_mlp"], state["d_heads"]) + state["ref"]

    def add_mlp(self, state, z, lx):
        H = state["d_heads"].shape[0]
        first = 1 + lx["layer"] * (H + 1)
        ref_mlp = jax.lax.dynamic_index_in_dim(self.z, first + H, keepdims=False)
        new = jnp.concatenate([state["d_heads"], (z - ref_mlp)[None]], 0)
        return {
            "delta": jax.lax.dynamic_update_slice_in_dim(state["delta"], new, first, axis=0),
            "ref": state["ref"] + ref_mlp,
        }

    def final(self, cfg, state, x_embed, records, logit_positions):
        d, ref = state["delta"], state["ref"]
        if logit_positions is not None:
            d = jax.vmap(at_positions, in_axes=(0, None))(d, logit_positions)
            ref = at_positions(ref, logit_positions)
        return jnp.tensordot(self.w[:, -1], d, axes=1) + ref, state["delta"] + self.z


# ================================================================================ modifiers
@struct.dataclass
class Taps(Intervention):
    """Additive terms at every destination slot's input, [T, N, P, D] in slot order: the q/k/v
    slots then read per-slot inputs. Their gradients are ∂metric/∂in_v (zero taps change nothing)."""

    slots: Float[Array, "T N P D"]

    def check(self, cfg: ModelConfig, n: int, p: int) -> None:
        shape = (cfg.graph.n_dst, n, p, cfg.d_model)
        if self.slots.shape != shape:
            raise ValueError(f"taps must have shape {shape} (slots, inputs, positions, width), got {self.slots.shape}")

    def layer_arrays(self, cfg):
        return self.slots[:-1].reshape(cfg.n_layers, cfg.graph.slots_per_layer, *self.slots.shape[1:])

    def attention_input(self, a, lx):
        return (a if a.ndim == 4 else a[None]) + lx[:-1]

    def mlp_input(self, a, lx):
        return a + lx[-1]

    def logits_input(self, x, logit_positions):
        return x + at_positions(self.slots[-1], logit_positions)


@struct.dataclass
class ProjectionTaps(Intervention):
    """Additive terms at the q/k/v projections ``qkv`` [L, 3H, N, P, Dh] (before RoPE; keys and
    values ungrouped to one per query head), the MLP inputs ``mlp`` [L, N, P, D] and the logits
    input ``logits`` [N, P, D]: the attention input stays shared, so every slot's gradient costs
    about one plain forward+backward (``patching.slot_gradients`` pulls them back to the inputs)."""

    qkv: Float[Array, "L Ta N P Dh"]  # Ta = 3H: the q, k, v slots
    mlp: Float[Array, "L N P D"]
    logits: Float[Array, "N P D"]

    def layer_arrays(self, cfg):
        return {"qkv": self.qkv, "mlp": self.mlp}

    def projections(self, cfg, q, k, v, lx):
        H, t = cfg.n_heads, lx["qkv"]
        return q + t[:H], expand_kv(cfg, k) + t[H : 2 * H], expand_kv(cfg, v) + t[2 * H :]

    def mlp_input(self, a, lx):
        return a + lx["mlp"]

    def logits_input(self, x, logit_positions):
        return x + at_positions(self.logits, logit_positions)


@struct.dataclass
class Replace(Intervention):
    """Node outputs blended towards ``values`` [S, N, P, D] (broadcast allowed) by ``weights`` [S]:
    z_u ← z_u + w_u (values_u − z_u). w_u = 1 fixes a node's output, and no gradient then flows
    through its own computation (EAP-IG on activations)."""

    values: Float[Array, "S N P D"]
    weights: Float[Array, " S"]
    needs_per_head = True

    def layer_arrays(self, cfg):
        L, H = cfg.n_layers, cfg.n_heads
        return (
            self.values[1:].reshape(L, H + 1, *self.values.shape[1:]),
            jnp.asarray(self.weights)[1:].reshape(L, H + 1),
        )

    @staticmethod
    def _blend(z, values, weights):
        w = weights.reshape((-1,) + (1,) * (z.ndim - 1)).astype(z.dtype)
        return z + w * (values.astype(z.dtype) - z)

    def embeddings(self, x):
        return self._blend(x[None], self.values[:1], jnp.asarray(self.weights)[:1])[0]

    def head_outputs(self, z, lx):
        return self._blend(z, lx[0][:-1], lx[1][:-1])

    def mlp_output(self, z, lx):
        return self._blend(z[None], lx[0][-1:], lx[1][-1:])[0]


@struct.dataclass
class Window(Intervention):
    """Only the ``width`` positions from ``start`` run (one start for all inputs, or one per input
    [N]), the earlier positions' keys and values read from another run's caches ``keys`` /
    ``values`` [L, K, N, P, Dh] (after RoPE): exact when every slot's input before ``start`` is that
    run's, as with counterfactual patching of prompts that agree before ``start`` and the clean
    run's caches. Node outputs and an ``EdgeMix``'s ``corrupted`` then cover the window; logit
    positions stay absolute (they must lie in the window)."""

    start: Int[Array, ""] | Int[Array, " N"]
    keys: Float[Array, "L K N P Dh"]
    values: Float[Array, "L K N P Dh"]
    width: int = struct.field(pytree_node=False)

    @property
    def query_offset(self):
        return self.start

    def layer_arrays(self, cfg):
        return (self.keys, self.values)

    def embeddings(self, x):
        return take_window(x, self.start, self.width, axis=1)

    def positions(self, positions):
        return take_window(positions, self.start, self.width, axis=1)

    def logit_positions(self, logit_positions):
        return None if logit_positions is None else logit_positions - self.start

    def keys_values(self, cfg, k, v, lx, heads):
        def cached(cache):  # the cache rows of the heads computed
            if heads is not None:
                return cache[heads // (cfg.n_heads // cfg.n_kv_heads)]
            return cache if k.shape[0] == cache.shape[0] else expand_kv(cfg, cache)

        return tuple(put_window(cached(c), new, self.start, axis=2) for c, new in zip(lx, (k, v), strict=True))


def split(interventions) -> tuple[Intervention | None, tuple[Intervention, ...]]:
    """(the stream or None, the modifiers) of one intervention or a tuple of them."""
    if interventions is None:
        interventions = ()
    if isinstance(interventions, Intervention):
        interventions = (interventions,)
    bad = [iv for iv in interventions if not isinstance(iv, Intervention)]
    if bad:
        raise TypeError(f"expected interventions (see mivar_jax.models.interventions), got {bad[0]!r}")
    streams = [iv for iv in interventions if iv.is_stream]
    if len(streams) > 1:
        raise ValueError(f"at most one stream intervention (Residual or EdgeMix) per run, got {len(streams)}")
    return (streams[0] if streams else None), tuple(iv for iv in interventions if not iv.is_stream)


__all__ = ["EdgeMix", "Intervention", "ProjectionTaps", "Replace", "Residual", "Stream", "Taps", "Window"]
