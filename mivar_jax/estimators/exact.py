"""Exact patching of every edge (or node) on every input, as batched jit kernels.

For an edge u→v with v in layer l, everything below v is the clean run, so the patched run only
changes from layer l on: v's input becomes in_v + Δz_u (Δz_u = z̃_u − z_u), then
- v a head's q/k/v slot: that head is recomputed from its own three inputs, the layer's MLP and
  layers l+1 … L-1 run on the changed stream;
- v = m_l: the MLP is recomputed on mid_l + Δz_u (pre_l + Δz_u with parallel attention and MLP),
  then layers l+1 …;
- v = logits: only the final norm and unembedding see final + Δz_u.
Node patching adds Δz_u to the stream after u (all of u's outgoing edges at once).
Score = metric(patched) − metric(clean), per input, read at the answer position (for logit
differences only the answers' logits are computed).

Counterfactual patching changes nothing before the first position where the two prompts differ
(attention is causal), and nothing after the answer position reaches the metric, so patched runs
compute only the window of positions between the two (``windows``), reading earlier keys and values
from the clean run's caches: for IOI that is a few of ~17 positions.
Chunks of edges are vmapped; each kernel takes the layer as a traced integer, so a few compiled
kernels (per window width) serve the whole graph. With a mesh, edges are split over the ``edges`` axis and inputs
over ``inputs``, every device running the single-device kernel on a block of the same shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from mivar_jax import engine
from mivar_jax.engine import EDGES, INPUTS
from mivar_jax.estimators.registry import Estimator, Options, register
from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import Stream, Window
from mivar_jax.models.layers import at_positions, head_writes, mlp, position_ids, take_window
from mivar_jax.models.transformer import block
from mivar_jax.patching import (
    CleanState,
    answer_metric,
    clean_state,
    dataset_means,
    layer_params,
    run_to_answer,
    window_start,
    windows,
)
from mivar_jax.sharding import Spec
from mivar_jax.tasks.data import TaskBatch, TaskData

_BATCH = TaskBatch(*(Spec(INPUTS) for _ in TaskBatch._fields))
_ROWS = Spec(None, INPUTS)
_STATE = CleanState(
    _ROWS, _ROWS, Spec(INPUTS), _ROWS, _ROWS, Spec(None, None, INPUTS), Spec(None, None, INPUTS), Spec(INPUTS), _ROWS
)
_OUT = Spec(EDGES, INPUTS)


def _metric_at(cfg, metric, params, b: TaskBatch, x_NxD) -> jax.Array:
    return answer_metric(cfg, params, x_NxD, b.correct, b.incorrect, metric)


class _Win(NamedTuple):
    """The positions a patch can change, [start, start + W) per input, and the clean caches there."""

    window: Window
    positions: Int[Array, "N W"]

    def __call__(self, a):  # [..., N, P, D] → [..., N, W, D]
        return take_window(a, self.window.start, self.window.width, axis=a.ndim - 2)

    @classmethod
    def of(cls, b: TaskBatch, st: CleanState, width: int) -> _Win:
        start = window_start(b, width)
        positions = take_window(position_ids(b.attention_mask), start, width, axis=1)
        return cls(Window(start, st.keys, st.values, width), positions)


@struct.dataclass
class _SlotPatch(Stream):
    """A layer whose head ``head`` reads in + Δz at its q (``kind`` 0), k (1) or v (2) slot: that
    head is recomputed from its three inputs, the others keep their clean outputs. With post-norms
    (``attn``: the layer's clean Σ_h z_h) the head is also recomputed clean and the layer's write is
    RMSNorm(attn − clean z_h + patched z_h): every head's share changes. State: the stream before
    the layer [N, W, D]."""

    head: Int[Array, ""]
    kind: Int[Array, ""]
    delta: Float[Array, "N W D"]
    mid: Float[Array, "N W D"]  # the clean stream after attention
    clean_head: Float[Array, "N W D"]
    attn: Float[Array, "N W D"] | None

    def heads(self, lx):
        return self.head[None] if self.attn is None else jnp.stack([self.head, self.head])

    def read_attention(self, state, lx):
        patched = [state + self.delta * (self.kind == i).astype(state.dtype) for i in range(3)]
        if self.attn is None:
            return state, jnp.stack(patched)
        return state, jnp.stack([patched[0], state, patched[1], state, patched[2], state])

    def head_writes(self, cfg, p, z):
        return z if self.attn is None else head_writes(cfg, p, self.attn + z[0] - z[1])

    def add_heads(self, state, z, b_o, lx):
        return self.mid + z[0] - self.clean_head if self.attn is None else state + z


def _finish(cfg, metric, params, b, win: _Win, st: CleanState, x_post, layer):
    """Layers after ``layer`` on the (windowed) post-layer stream, then Δmetric against the clean run."""
    answer = b.answer_pos - win.window.start
    final = run_to_answer(cfg, params, x_post, win.window, win.positions, b.attention_mask, layer + 1, answer)
    return _metric_at(cfg, metric, params, b, final) - st.metric


def _head_edges(cfg, metric, width, params, b, st: CleanState, layer, src, head, kind):
    """Edges into a head's q (kind 0), k (1) or v (2) slot in ``layer``: [C, N]."""
    H = cfg.n_heads
    win = _Win.of(b, st, width)
    p = layer_params(params, layer)
    pre, mid = win(st.pre[layer]), win(st.mid[layer])
    clean_heads = win(jax.lax.dynamic_slice_in_dim(st.nodes, 1 + layer * (H + 1), H))
    lx = (None, (st.keys[layer], st.values[layer]))

    def one(src_e, head_e, kind_e):
        attn = None if st.attn is None else win(st.attn[layer])
        patch = _SlotPatch(head_e, kind_e, win(st.delta[src_e]), mid, clean_heads[head_e], attn)
        x_post, _ = block(cfg, p, layer, pre, patch, (win.window,), lx, win.positions, b.attention_mask)
        return _finish(cfg, metric, params, b, win, st, x_post, layer)

    return jax.vmap(one)(src, head, kind)


def _mlp_edges(cfg, metric, width, params, b, st: CleanState, layer, src):
    """Edges into ``m{layer}``: [C, N]."""
    win = _Win.of(b, st, width)
    p = layer_params(params, layer)
    mid = win(st.mid[layer])
    mlp_in = win(st.pre[layer]) if cfg.parallel_attn_mlp else mid  # what the MLP reads

    def one(s):
        return _finish(cfg, metric, params, b, win, st, mid + mlp(cfg, p, mlp_in + win(st.delta[s])), layer)

    return jax.vmap(one)(src)


def _logit_edges(cfg, metric, width, params, b, st: CleanState, src):
    """Edges into ``logits``: [C, N]."""
    final = lambda s: at_positions(st.final + st.delta[s], b.answer_pos)
    return jax.vmap(lambda s: _metric_at(cfg, metric, params, b, final(s)) - st.metric)(src)


def _nodes(cfg, metric, width, params, b, st: CleanState, layer, src, is_head):
    """Nodes patched in all their outgoing edges: Δz_u added to the stream after u: [C, N].
    ``layer`` -1 is the input node."""
    H = cfg.n_heads
    win = _Win.of(b, st, width)
    at = jnp.maximum(layer, 0)
    p = layer_params(params, at)

    def one(s, head):
        d = win(st.delta[s])
        after_mlp = win(st.mid[at]) + win(st.nodes[1 + at * (H + 1) + H]) + d  # = the clean post-layer stream + d
        if cfg.parallel_attn_mlp:  # a head's own layer's MLP does not read it
            x_post = after_mlp
        else:
            x_mid = win(st.mid[at]) + d
            x_post = jnp.where(head, x_mid + mlp(cfg, p, x_mid), after_mlp)
        x_post = jnp.where(layer < 0, win(st.pre[0]) + d, x_post)
        return _finish(cfg, metric, params, b, win, st, x_post, layer)

    return jax.vmap(one)(src, is_head)


@functools.lru_cache(maxsize=64)
def _kernels(cfg: ModelConfig, metric: str, ablation: str, width: int, mesh: Mesh | None):
    """The jitted (and, with a mesh, SPMD) kernels for one model / metric / ablation / window."""
    rep = Spec()
    prepare = functools.partial(clean_state, cfg, metric, ablation)
    common = (rep, _BATCH, _STATE)  # params, batch, state
    kernels = {
        "head": (_head_edges, common + (rep, Spec(EDGES), Spec(EDGES), Spec(EDGES))),
        "mlp": (_mlp_edges, common + (rep, Spec(EDGES))),
        "logits": (_logit_edges, common + (Spec(EDGES),)),
        "nodes": (_nodes, common + (rep, Spec(EDGES), Spec(EDGES))),
    }
    out = {"prepare": engine.kernel(prepare, mesh, (rep, _BATCH, rep, rep, rep), _STATE)}
    for name, (fn, specs) in kernels.items():
        out[name] = engine.kernel(functools.partial(fn, cfg, metric, width), mesh, specs, _OUT)
    return out


class _Group(NamedTuple):
    kernel: str
    layer: int
    items: np.ndarray  # flat edge (or node) indices
    args: tuple[np.ndarray, ...]  # per-item kernel arguments


def _edge_groups(cfg: ModelConfig) -> list[_Group]:
    g = cfg.graph
    H, slots = cfg.n_heads, g.slots_per_layer
    groups = []
    for layer in range(cfg.n_layers):
        base = layer * slots
        e = np.nonzero((g.edge_dst >= base) & (g.edge_dst < base + 3 * H))[0]
        r = g.edge_dst[e] - base
        groups.append(_Group("head", layer, e, (g.edge_src[e], r % H, r // H)))
        e = np.nonzero(g.edge_dst == base + 3 * H)[0]
        groups.append(_Group("mlp", layer, e, (g.edge_src[e],)))
    e = np.nonzero(g.edge_dst == g.n_dst - 1)[0]
    groups.append(_Group("logits", -1, e, (g.edge_src[e],)))
    return groups


def _node_groups(cfg: ModelConfig) -> list[_Group]:
    g = cfg.graph
    groups = [_Group("nodes", -1, np.array([0]), (np.array([0]), np.array([False])))]
    for layer in range(cfg.n_layers):
        s = 1 + layer * (cfg.n_heads + 1) + np.arange(cfg.n_heads + 1)
        groups.append(_Group("nodes", layer, s, (s, np.arange(cfg.n_heads + 1) < cfg.n_heads)))
    assert sum(len(x.items) for x in groups) == g.n_src
    return groups


def bytes_per_patch(cfg: ModelConfig, n_positions: int, width: int) -> int:
    """Rough working memory of one (edge, input) through the remaining layers (float32), on a
    window of ``width`` of the ``n_positions`` positions."""
    D, F, H = cfg.d_model, cfg.d_mlp, cfg.n_heads
    return 4 * width * (10 * D + 3 * F + 4 * H * n_positions + 6 * H * cfg.d_head) + 8 * n_positions * H * cfg.d_head


def bytes_per_input_state(cfg: ModelConfig, n_positions: int) -> int:
    """Memory of one input's clean state (residual streams, node outputs, deltas, caches)."""
    g = cfg.graph
    caches = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.d_head
    streams = (3 if cfg.post_norms else 2) * cfg.n_layers  # pre, mid (and attn)
    return 4 * n_positions * (cfg.d_model * (streams + 2 * g.n_src + 2) + caches)


def exact_scores(model, data: TaskData, o: Options, res: engine.Resources, estimator, subset, progress, sink):
    """Per-input exact scores ``[N, E]`` (or ``[N, S]`` for nodes) and the clean metric into
    ``sink``, a batch of inputs at a time (the batches ``sink`` holds are skipped). With ``subset``
    (edge or node indices) only those are computed, the others are NaN.

    Inputs are grouped by how many trailing positions a patch can change (``windows``); each group
    runs kernels of its own window width. The grouping depends on the data only, so every device
    count computes each input in kernels of the same shapes."""
    cfg, params = model.config, engine.on_mesh(model.params, res.mesh)
    groups = _edge_groups(cfg) if o.level == "edge" else _node_groups(cfg)
    n_items = cfg.graph.n_edges if o.level == "edge" else cfg.graph.n_src
    if subset is not None:
        keep = np.zeros(n_items, bool)
        keep[np.asarray(subset)] = True
        groups = [
            _Group(x.kernel, x.layer, x.items[keep[x.items]], tuple(a[keep[x.items]] for a in x.args)) for x in groups
        ]
        groups = [x for x in groups if len(x.items)]
    n_edge_dev = res.axis(EDGES)
    local = min(res.batch_size or 8, len(data))
    means = dataset_means(model, data, local, o.ablation)
    P = data.n_positions
    cap = min(max(len(x.items) for x in groups), 4096)
    widths = windows(data, o.ablation, local)
    for width, b, rows in engine.batches(data, res, local, widths=widths, axis=INPUTS, skip=sink.done):
        kernels = _kernels(cfg, data.metric, o.ablation, width, res.mesh)
        chunk = engine.fit(
            res.memory_budget, local * bytes_per_patch(cfg, P, width), fixed=local * bytes_per_input_state(cfg, P),
            cap=cap, what="edge", fix=f"{local} inputs of {P} positions; lower batch_size or raise the budget",
        )  # fmt: skip
        st = kernels["prepare"](params, b, data.noise, data.noise_seed, means)
        scores = np.full((len(rows), n_items), sink.fill, np.float32)
        for group in groups:
            # per-device chunk: the budget's, or the group's size rounded up to a power of two
            # (few compilations; device-independent, so results do not depend on the mesh)
            step = min(chunk, engine.bucket(len(group.items))) * n_edge_dev
            for first in range(0, len(group.items), step):
                take = np.arange(first, min(first + step, len(group.items)))
                n_take = len(take)
                take = np.concatenate([take, np.full(step - n_take, take[-1])])
                args = [jnp.asarray(a[take]) for a in group.args]
                layer = () if group.kernel == "logits" else (jnp.int32(group.layer),)
                out = np.asarray(kernels[group.kernel](params, b, st, *layer, *args))  # [step, batch]
                scores[:, group.items[take[:n_take]]] = out[:n_take, : len(rows)].T
                if progress is not None:
                    progress(n_take * len(rows))
        sink.put(rows, scores, np.asarray(st.metric)[: len(rows)])


register(Estimator("exact", exact_scores, subset=True))
