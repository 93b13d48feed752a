"""Exact patching of every edge (or node) on every input, as batched jit kernels.

For an edge u→v with v in layer l, everything below v is the clean run, so the patched run only
changes from layer l on: v's input becomes in_v + Δz_u (Δz_u = z̃_u − z_u), then
- v a head's q/k/v slot: that head is recomputed from its own three inputs, the layer's MLP and
  layers l+1 … L-1 run on the changed stream;
- v = m_l: the MLP is recomputed on mid_l + Δz_u, then layers l+1 …;
- v = logits: only the final norm and unembedding see final + Δz_u.
Node patching adds Δz_u to the stream after u (all of u's outgoing edges at once).
Score = metric(patched) − metric(clean), per input, read at the answer position (for logit
differences only the answers' logits are computed).

Chunks of edges are vmapped; each kernel takes the layer as a traced integer, so three compiled
kernels serve the whole graph. With a mesh, edges are split over the ``edges`` axis and inputs
over ``inputs``, every device running the single-device kernel on a block of the same shape.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mivar_jax.estimators.common import answer_metric, dataset_means, reference_values, run_nodes
from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import at_positions, mlp, position_ids
from mivar_jax.models.patching import head_output, layer_params, residual_states, run_from
from mivar_jax.sharding import EDGES, INPUTS, P, axis_size, spmd
from mivar_jax.tasks.data import TaskBatch, TaskData

DEFAULT_MEMORY_BUDGET = 2 * 2**30  # bytes per device


class PatchState(NamedTuple):
    """The clean run of a batch, what every patch starts from."""

    pre: jax.Array  # [L, N, P, D] residual stream before each layer
    mid: jax.Array  # [L, N, P, D] … between attention and MLP
    final: jax.Array  # [N, P, D]
    nodes: jax.Array  # [S, N, P, D] clean node outputs
    delta: jax.Array  # [S, N, P, D] Δz = reference − clean
    metric: jax.Array  # [N] clean metric


_BATCH = TaskBatch(*(P(INPUTS) for _ in TaskBatch._fields))
_STATE = PatchState(P(None, INPUTS), P(None, INPUTS), P(INPUTS), P(None, INPUTS), P(None, INPUTS), P(INPUTS))
_OUT = P(EDGES, INPUTS)


def _prepare(cfg, metric, ablation, params, b, noise, noise_seed, means) -> PatchState:
    ref_nodes, _ = reference_values(cfg, params, b, ablation, noise, noise_seed, means)
    nodes, _ = run_nodes(cfg, params, b, metric)
    pre, mid, final = residual_states(cfg, params, nodes)
    clean_metric = _metric(cfg, metric, params, b, final)
    return PatchState(pre, mid, final, nodes, ref_nodes - nodes, clean_metric)


def _metric(cfg, metric, params, b: TaskBatch, final_NxPxD) -> jax.Array:
    return answer_metric(cfg, params, at_positions(final_NxPxD, b.answer_pos), b.correct, b.incorrect, metric)


def _finish(cfg, metric, params, b, st, x_post, layer):
    """Layers after ``layer`` on the post-layer stream, then Δmetric against the clean run."""
    positions = position_ids(b.attention_mask)
    final = run_from(cfg, params, x_post, positions, b.attention_mask, layer + 1)
    return _metric(cfg, metric, params, b, final) - st.metric


def _head_edges(cfg, metric, params, b, st: PatchState, layer, src, head, kind):
    """Edges into a head's q (kind 0), k (1) or v (2) slot in ``layer``: [C, N]."""
    H = cfg.n_heads
    p = layer_params(params, layer)
    positions = position_ids(b.attention_mask)
    pre, mid = st.pre[layer], st.mid[layer]
    clean_heads = jax.lax.dynamic_slice_in_dim(st.nodes, 1 + layer * (H + 1), H)

    def one(src_e, head_e, kind_e):
        d = st.delta[src_e]
        x_q, x_k, x_v = (pre + d * (kind_e == i).astype(d.dtype) for i in range(3))
        new = head_output(cfg, p, head_e, x_q, x_k, x_v, positions, b.attention_mask)
        x_mid = mid + new - clean_heads[head_e]
        return _finish(cfg, metric, params, b, st, x_mid + mlp(cfg, p, x_mid), layer)

    return jax.vmap(one)(src, head, kind)


def _mlp_edges(cfg, metric, params, b, st: PatchState, layer, src):
    """Edges into ``m{layer}``: [C, N]."""
    p = layer_params(params, layer)
    mid = st.mid[layer]
    return jax.vmap(lambda s: _finish(cfg, metric, params, b, st, mid + mlp(cfg, p, mid + st.delta[s]), layer))(src)


def _logit_edges(cfg, metric, params, b, st: PatchState, src):
    """Edges into ``logits``: [C, N]."""
    return jax.vmap(lambda s: _metric(cfg, metric, params, b, st.final + st.delta[s]) - st.metric)(src)


def _nodes(cfg, metric, params, b, st: PatchState, layer, src, is_head):
    """Nodes patched in all their outgoing edges: Δz_u added to the stream after u: [C, N].
    ``layer`` -1 is the input node."""
    H = cfg.n_heads
    p = layer_params(params, jnp.maximum(layer, 0))

    def one(s, head):
        d = st.delta[s]
        x_mid = st.mid[jnp.maximum(layer, 0)] + d
        after_head = x_mid + mlp(cfg, p, x_mid)
        after_mlp = st.mid[jnp.maximum(layer, 0)] + st.nodes[1 + jnp.maximum(layer, 0) * (H + 1) + H] + d
        x_post = jnp.where(head, after_head, after_mlp)
        x_post = jnp.where(layer < 0, st.pre[0] + d, x_post)
        return _finish(cfg, metric, params, b, st, x_post, jnp.where(layer < 0, -1, layer))

    return jax.vmap(one)(src, is_head)


@functools.lru_cache(maxsize=32)
def _kernels(cfg: ModelConfig, metric: str, ablation: str, mesh: Mesh | None):
    """The jitted (and, with a mesh, SPMD) kernels for one model / metric / ablation."""
    rep = P()
    prepare = spmd(functools.partial(_prepare, cfg, metric, ablation), mesh, (rep, _BATCH, rep, rep, rep), _STATE)
    head = spmd(
        functools.partial(_head_edges, cfg, metric),
        mesh,
        (rep, _BATCH, _STATE, rep, P(EDGES), P(EDGES), P(EDGES)),
        _OUT,
    )
    mlp_ = spmd(functools.partial(_mlp_edges, cfg, metric), mesh, (rep, _BATCH, _STATE, rep, P(EDGES)), _OUT)
    logits = spmd(functools.partial(_logit_edges, cfg, metric), mesh, (rep, _BATCH, _STATE, P(EDGES)), _OUT)
    nodes = spmd(functools.partial(_nodes, cfg, metric), mesh, (rep, _BATCH, _STATE, rep, P(EDGES), P(EDGES)), _OUT)
    return {
        name: jax.jit(f) for name, f in dict(prepare=prepare, head=head, mlp=mlp_, logits=logits, nodes=nodes).items()
    }


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


def bytes_per_patch(cfg: ModelConfig, n_positions: int) -> int:
    """Rough working memory of one (edge, input) through the remaining layers (float32)."""
    D, F, H, P_ = cfg.d_model, cfg.d_mlp, cfg.n_heads, n_positions
    return 4 * P_ * (10 * D + 3 * F + 4 * H * P_ + 6 * H * cfg.d_head)


def bytes_per_input_state(cfg: ModelConfig, n_positions: int) -> int:
    """Memory of one input's clean state (residual streams, node outputs and their deltas)."""
    g = cfg.graph
    return 4 * n_positions * cfg.d_model * (2 * cfg.n_layers + 2 * g.n_src + 2)


def plan_chunks(cfg: ModelConfig, n_positions: int, batch_size: int, memory_budget: int, largest_group: int) -> int:
    """Edges per kernel call (per device) that fit ``memory_budget`` bytes with ``batch_size`` inputs."""
    state = batch_size * bytes_per_input_state(cfg, n_positions)
    per_edge = batch_size * bytes_per_patch(cfg, n_positions)
    chunk = (memory_budget - state) // per_edge
    if chunk < 1:
        raise MemoryError(
            f"a memory budget of {memory_budget / 2**20:.0f} MiB is too small for one edge: {batch_size} inputs of "
            f"{n_positions} positions need about {(state + per_edge) / 2**20:.0f} MiB (lower batch_size or raise the budget)"
        )
    return int(min(chunk, largest_group, 4096))


def exact_scores(
    model,
    data: TaskData,
    *,
    level: str = "edge",
    ablation: str = "patch",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input exact scores ``[N, E]`` (or ``[N, S]`` for nodes) and the clean metric ``[N]``."""
    cfg, params = model.config, model.params
    groups = _edge_groups(cfg) if level == "edge" else _node_groups(cfg)
    n_items = cfg.graph.n_edges if level == "edge" else cfg.graph.n_src
    n_edge_dev, n_input_dev = axis_size(mesh, EDGES), axis_size(mesh, INPUTS)
    local_batch = min(batch_size or 8, len(data))
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    chunk = plan_chunks(cfg, data.n_positions, local_batch, budget, max(len(x.items) for x in groups))
    kernels = _kernels(cfg, data.metric, ablation, mesh if mesh is not None and mesh.size > 1 else None)
    means = dataset_means(model, data, local_batch) if ablation == "mean" else jnp.zeros(())

    per_input = np.zeros((len(data), n_items), np.float32)
    clean_metric = np.zeros(len(data), np.float32)
    step = chunk * n_edge_dev
    row = 0
    for b, n_real in data.batches(local_batch, devices=n_input_dev):
        st = kernels["prepare"](params, b, data.noise, data.noise_seed, means)
        clean_metric[row : row + n_real] = np.asarray(st.metric)[:n_real]
        for group in groups:
            for start in range(0, len(group.items), step):
                take = np.arange(start, min(start + step, len(group.items)))
                take = np.concatenate([take, np.full(step - len(take), take[-1])])
                args = [jnp.asarray(a[take]) for a in group.args]
                layer = () if group.kernel == "logits" else (jnp.int32(group.layer),)
                out = np.asarray(kernels[group.kernel](params, b, st, *layer, *args))  # [step, batch]
                n_take = min(step, len(group.items) - start)
                per_input[row : row + n_real, group.items[take[:n_take]]] = out[:n_take, :n_real].T
                if progress is not None:
                    progress(n_take * n_real)
        row += n_real
    return per_input, clean_metric
