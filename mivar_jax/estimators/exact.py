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
from jax.sharding import Mesh
from jaxtyping import Array, Int

from mivar_jax._checks import mib
from mivar_jax.estimators.common import answer_metric, dataset_means, reference_values, run_nodes
from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import at_positions, mlp, position_ids, take_window
from mivar_jax.models.patching import head_output, kv_caches, layer_params, residual_states, run_to_answer
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
    keys: jax.Array  # [L, K, N, P, E] clean keys (after RoPE) and values of every layer
    values: jax.Array
    metric: jax.Array  # [N] clean metric


_BATCH = TaskBatch(*(P(INPUTS) for _ in TaskBatch._fields))
_ROWS = P(None, INPUTS)
_STATE = PatchState(_ROWS, _ROWS, P(INPUTS), _ROWS, _ROWS, P(None, None, INPUTS), P(None, None, INPUTS), P(INPUTS))
_OUT = P(EDGES, INPUTS)


def _prepare(cfg, metric, ablation, params, b, noise, noise_seed, means) -> PatchState:
    ref_nodes, _ = reference_values(cfg, params, b, ablation, noise, noise_seed, means)
    nodes, _ = run_nodes(cfg, params, b, metric)
    pre, mid, final = residual_states(cfg, params, nodes)
    keys, values = kv_caches(cfg, params, pre, position_ids(b.attention_mask))
    clean_metric = _metric(cfg, metric, params, b, final, 0)
    return PatchState(pre, mid, final, nodes, ref_nodes - nodes, keys, values, clean_metric)


def _metric(cfg, metric, params, b: TaskBatch, final_NxWxD, start) -> jax.Array:
    return _metric_at(cfg, metric, params, b, at_positions(final_NxWxD, b.answer_pos - start))


def _metric_at(cfg, metric, params, b: TaskBatch, x_NxD) -> jax.Array:
    return answer_metric(cfg, params, x_NxD, b.correct, b.incorrect, metric)


class _Window(NamedTuple):
    """The positions a patch can change, [start, start + W): slicers for [..., P, D] and [N, P]."""

    start: jax.Array  # [N]
    width: int

    def __call__(self, a):  # [..., N, P, D] → [..., N, W, D]
        return take_window(a, self.start, self.width, axis=a.ndim - 2)

    def positions(self, b: TaskBatch):
        return take_window(position_ids(b.attention_mask), self.start, self.width, axis=1)

    @classmethod
    def of(cls, b: TaskBatch, width: int) -> _Window:
        return cls(window_start(b, width), width)


def _finish(cfg, metric, params, b, st, win: _Window, x_post, layer):
    """Layers after ``layer`` on the (windowed) post-layer stream, then Δmetric against the clean run."""
    caches = (st.keys, st.values)
    answer = b.answer_pos - win.start
    final = run_to_answer(cfg, params, x_post, caches, win.positions(b), b.attention_mask, layer + 1, win.start, answer)
    return _metric_at(cfg, metric, params, b, final) - st.metric


def _head_edges(cfg, metric, width, params, b, st: PatchState, layer, src, head, kind):
    """Edges into a head's q (kind 0), k (1) or v (2) slot in ``layer``: [C, N]."""
    H = cfg.n_heads
    win = _Window.of(b, width)
    p = layer_params(params, layer)
    pre, mid = win(st.pre[layer]), win(st.mid[layer])
    clean_heads = win(jax.lax.dynamic_slice_in_dim(st.nodes, 1 + layer * (H + 1), H))
    cache = (st.keys[layer], st.values[layer])

    def one(src_e, head_e, kind_e):
        d = win(st.delta[src_e])
        x_q, x_k, x_v = (pre + d * (kind_e == i).astype(d.dtype) for i in range(3))
        new = head_output(cfg, p, head_e, x_q, x_k, x_v, cache, win.positions(b), b.attention_mask, win.start)
        x_mid = mid + new - clean_heads[head_e]
        return _finish(cfg, metric, params, b, st, win, x_mid + mlp(cfg, p, x_mid), layer)

    return jax.vmap(one)(src, head, kind)


def _mlp_edges(cfg, metric, width, params, b, st: PatchState, layer, src):
    """Edges into ``m{layer}``: [C, N]."""
    win = _Window.of(b, width)
    p = layer_params(params, layer)
    mid = win(st.mid[layer])

    def one(s):
        return _finish(cfg, metric, params, b, st, win, mid + mlp(cfg, p, mid + win(st.delta[s])), layer)

    return jax.vmap(one)(src)


def _logit_edges(cfg, metric, width, params, b, st: PatchState, src):
    """Edges into ``logits``: [C, N]."""
    return jax.vmap(lambda s: _metric(cfg, metric, params, b, st.final + st.delta[s], 0) - st.metric)(src)


def _nodes(cfg, metric, width, params, b, st: PatchState, layer, src, is_head):
    """Nodes patched in all their outgoing edges: Δz_u added to the stream after u: [C, N].
    ``layer`` -1 is the input node."""
    H = cfg.n_heads
    win = _Window.of(b, width)
    at = jnp.maximum(layer, 0)
    p = layer_params(params, at)

    def one(s, head):
        d = win(st.delta[s])
        x_mid = win(st.mid[at]) + d
        after_head = x_mid + mlp(cfg, p, x_mid)
        after_mlp = win(st.mid[at]) + win(st.nodes[1 + at * (H + 1) + H]) + d
        x_post = jnp.where(head, after_head, after_mlp)
        x_post = jnp.where(layer < 0, win(st.pre[0]) + d, x_post)
        return _finish(cfg, metric, params, b, st, win, x_post, layer)

    return jax.vmap(one)(src, is_head)


@functools.lru_cache(maxsize=64)
def _kernels(cfg: ModelConfig, metric: str, ablation: str, width: int, mesh: Mesh | None):
    """The jitted (and, with a mesh, SPMD) kernels for one model / metric / ablation / window."""
    rep = P()
    prepare = spmd(functools.partial(_prepare, cfg, metric, ablation), mesh, (rep, _BATCH, rep, rep, rep), _STATE)
    common = (rep, _BATCH, _STATE)  # params, batch, state
    kernels = {
        "head": (_head_edges, common + (rep, P(EDGES), P(EDGES), P(EDGES))),
        "mlp": (_mlp_edges, common + (rep, P(EDGES))),
        "logits": (_logit_edges, common + (P(EDGES),)),
        "nodes": (_nodes, common + (rep, P(EDGES), P(EDGES))),
    }
    out = {"prepare": jax.jit(prepare)}
    for name, (fn, specs) in kernels.items():
        out[name] = jax.jit(spmd(functools.partial(fn, cfg, metric, width), mesh, specs, _OUT))
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
    return 4 * n_positions * (cfg.d_model * (2 * cfg.n_layers + 2 * g.n_src + 2) + caches)


def plan_chunks(
    cfg: ModelConfig, n_positions: int, width: int, batch_size: int, memory_budget: int, largest_group: int
) -> int:
    """Edges per kernel call (per device) that fit ``memory_budget`` bytes with ``batch_size`` inputs."""
    state = batch_size * bytes_per_input_state(cfg, n_positions)
    per_edge = batch_size * bytes_per_patch(cfg, n_positions, width)
    chunk = (memory_budget - state) // per_edge
    if chunk < 1:
        raise MemoryError(
            f"a memory budget of {mib(memory_budget)} is too small for one edge: {batch_size} inputs of "
            f"{n_positions} positions need about {mib(state + per_edge)} (lower batch_size or raise the budget)"
        )
    return int(min(chunk, largest_group, 4096))


def first_changes(clean, corrupted, attention_mask, answer_pos, xp=np):
    """Per input, the first real position where the clean and corrupted prompts differ (the
    answer position where none does, or where it comes later). numpy or jax.numpy (``xp``)."""
    differs = (clean != corrupted) & (attention_mask > 0)
    first = xp.where(differs.any(1), differs.argmax(1), answer_pos)
    return xp.minimum(first, answer_pos)


def windows(data: TaskData, ablation: str, batch_size: int = 8, max_widths: int = 3) -> np.ndarray:
    """Per input, how many positions a patch computes (a window of the prompt).

    Counterfactual patching leaves everything before the first position where the prompts differ
    as in the clean run, and nothing after the answer position reaches the metric (attention is
    causal): an input needs answer − first + 1 positions. Inputs are grouped by window width
    (a compilation and at least one call each, of up to ``batch_size`` inputs); at most
    ``max_widths`` widths are chosen to minimise the positions computed plus, per call, half a
    call of full-width prompts (the per-call cost that favours fewer, fuller groups). Zero or
    mean ablation change every position. Where a window starts: ``window_start``."""
    if ablation != "patch":
        return np.full(len(data), data.n_positions)
    first = first_changes(data.clean, data.corrupted, data.attention_mask, data.answer_pos)
    need = np.minimum(data.answer_pos - first + 1, data.n_positions)
    values, counts = np.unique(need, return_counts=True)
    per_call = batch_size * data.n_positions / 2
    widths = _cheapest_widths(values, counts, max_widths, batch_size, per_call)
    return widths[np.searchsorted(widths, need)]


def _cheapest_widths(values, counts, k: int, batch_size: int, per_call: float) -> np.ndarray:
    """At most ``k`` widths for inputs needing sorted ``values`` (``counts`` of each), each the
    largest need of a run of consecutive values, minimising Σ_groups count × width + calls ×
    ``per_call`` (calls = ⌈count / batch_size⌉): dynamic programming over the split points."""
    n = len(values)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    group = lambda h, i: (prefix[i] - prefix[h]) * values[i - 1] + -(-(prefix[i] - prefix[h]) // batch_size) * per_call
    cost = np.full((k + 1, n + 1), np.inf)  # cost[j, i]: values[:i] in j groups
    cut = np.zeros((k + 1, n + 1), int)
    cost[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            options = [cost[j - 1, h] + group(h, i) for h in range(i)]
            cut[j, i] = int(np.argmin(options))
            cost[j, i] = options[cut[j, i]]
    j, i, ends = int(np.argmin(cost[1:, n])) + 1, n, []
    while i > 0:
        ends.append(values[i - 1])
        i, j = cut[j, i], j - 1
    return np.array(sorted(ends))


def window_start(b: TaskBatch, width: int) -> Int[Array, " N"]:
    """Per input of a batch, the first position of its window of ``width`` positions (see
    ``windows``): the first change, moved left where the window would pass the prompts' end."""
    first = first_changes(b.clean, b.corrupted, b.attention_mask, b.answer_pos, jnp)
    return jnp.minimum(first, b.clean.shape[1] - width).astype(jnp.int32)


def exact_scores(
    model,
    data: TaskData,
    *,
    level: str = "edge",
    ablation: str = "patch",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    subset: np.ndarray | None = None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input exact scores ``[N, E]`` (or ``[N, S]`` for nodes) and the clean metric ``[N]``;
    with ``subset`` (edge or node indices) only those are computed, the others are NaN.

    Inputs are grouped by how many trailing positions a patch can change (``windows``); each group
    runs kernels of its own window width. The grouping depends on the data only, so every device
    count computes each input in kernels of the same shapes."""
    cfg, params = model.config, model.params
    groups = _edge_groups(cfg) if level == "edge" else _node_groups(cfg)
    n_items = cfg.graph.n_edges if level == "edge" else cfg.graph.n_src
    if subset is not None:
        keep = np.zeros(n_items, bool)
        keep[np.asarray(subset)] = True
        groups = [
            _Group(x.kernel, x.layer, x.items[keep[x.items]], tuple(a[keep[x.items]] for a in x.args)) for x in groups
        ]
        groups = [x for x in groups if len(x.items)]
    n_edge_dev, n_input_dev = axis_size(mesh, EDGES), axis_size(mesh, INPUTS)
    spmd_mesh = mesh if mesh is not None and mesh.size > 1 else None
    local_batch = min(batch_size or 8, len(data))
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    means = dataset_means(model, data, local_batch) if ablation == "mean" else jnp.zeros(())
    P_ = data.n_positions

    per_input = np.full((len(data), n_items), np.nan if subset is not None else 0.0, np.float32)
    clean_metric = np.zeros(len(data), np.float32)
    widths = windows(data, ablation, local_batch)
    for width in np.unique(widths):
        chunk = plan_chunks(cfg, P_, int(width), local_batch, budget, max(len(x.items) for x in groups))
        kernels = _kernels(cfg, data.metric, ablation, int(width), spmd_mesh)
        for b, rows in data.batches(local_batch, devices=n_input_dev, rows=np.nonzero(widths == width)[0]):
            n_real = len(rows)
            st = kernels["prepare"](params, b, data.noise, data.noise_seed, means)
            clean_metric[rows] = np.asarray(st.metric)[:n_real]
            for group in groups:
                # per-device chunk: the budget's, or the group's size rounded up to a power of two
                # (few compilations; device-independent, so results do not depend on the mesh)
                step = min(chunk, 1 << int(np.ceil(np.log2(len(group.items))))) * n_edge_dev
                for first in range(0, len(group.items), step):
                    take = np.arange(first, min(first + step, len(group.items)))
                    n_take = len(take)
                    take = np.concatenate([take, np.full(step - n_take, take[-1])])
                    args = [jnp.asarray(a[take]) for a in group.args]
                    layer = () if group.kernel == "logits" else (jnp.int32(group.layer),)
                    out = np.asarray(kernels[group.kernel](params, b, st, *layer, *args))  # [step, batch]
                    per_input[np.ix_(rows, group.items[take[:n_take]])] = out[:n_take, :n_real].T
                    if progress is not None:
                        progress(n_take * n_real)
    return per_input, clean_metric
