"""Pruning: keep only the edges that lie on a path from ``input`` to ``logits``.

Node-level view of the Graph: nodes are the sources (``input``, heads, MLPs) plus ``logits``
(index S); a destination slot belongs to its node (a head's q/k/v slots to the head). An edge
u→v of a circuit survives iff u is reachable from ``input`` and v's node reaches ``logits``
through circuit edges. Every surviving edge then lies on a complete path whose edges all
survive, so one pass is already the fixed point of repeatedly deleting dangling nodes: pruning
is idempotent and never leaves a node without a path from ``input`` or to ``logits``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool

from mivar_jax.graph import Graph


def slot_owner(graph: Graph) -> np.ndarray:
    """[n_dst] int: the node each destination slot belongs to (``logits`` → n_src)."""
    owner = np.full(graph.n_dst, graph.n_src, np.int64)
    src_of_slot = np.nonzero(graph.own_slots.T)
    owner[src_of_slot[0]] = src_of_slot[1]
    return owner


@functools.partial(jax.jit, static_argnums=0)
def prune_dense(graph: Graph, masks_CxE: Bool[Array, "C E"]) -> tuple[Bool[Array, "C E"], Bool[Array, "C nodes"]]:
    """``prune`` for a stack [C, E] of masks, unchecked and jit-able (inside the bootstrap's kernels)."""
    S, C = graph.n_src, masks_CxE.shape[0]
    edge_src, edge_node = graph.edge_src, slot_owner(graph)[graph.edge_dst]
    # Node adjacency [C, S, S+1]: any circuit edge from source u into a slot of node n.
    adj = jnp.zeros((C, S, S + 1), jnp.float32).at[:, edge_src, edge_node].add(masks_CxE.astype(jnp.float32)) > 0
    adj_f = adj.astype(jnp.float32)
    start = jnp.zeros(S + 1, bool).at[0].set(True)
    end = jnp.zeros(S + 1, bool).at[S].set(True)

    def forward(_, reach_Cxnodes):
        step = jnp.einsum("bs,bsn->bn", reach_Cxnodes[:, :S].astype(jnp.float32), adj_f) > 0
        return step | start

    def backward(_, reach_Cxnodes):
        step = jnp.einsum("bsn,bn->bs", adj_f, reach_Cxnodes.astype(jnp.float32)) > 0
        return jnp.concatenate([step, jnp.ones((C, 1), bool)], 1)

    depth = 2 * graph.n_layers + 2  # a bound on the edges of any path: input, (heads, MLP) per layer, logits
    reach_from_input = jax.lax.fori_loop(0, depth, forward, jnp.broadcast_to(start, (C, S + 1)))
    reach_to_logits = jax.lax.fori_loop(0, depth, backward, jnp.broadcast_to(end, (C, S + 1)))
    kept = masks_CxE & reach_from_input[:, edge_src] & reach_to_logits[:, edge_node]
    w = kept.astype(jnp.float32)  # the nodes touched by the kept edges (both ends)
    return kept, jnp.zeros((C, S + 1), jnp.float32).at[:, edge_src].add(w).at[:, edge_node].add(w) > 0


def prune(graph: Graph, masks: Bool[ArrayLike, "*C E"]) -> tuple[Bool[Array, "*C E"], Bool[Array, "*C nodes"]]:
    """Pruned edge masks and their node masks ([..., n_src + 1], ``logits`` last), for one mask
    [E] or a stack [C, E]; jit-compiled, vectorised over the stack."""
    masks = jnp.asarray(masks, bool)
    if masks.shape[-1] != graph.n_edges:
        raise ValueError(f"edge masks must have a last axis of {graph.n_edges} edges, got shape {masks.shape}")
    kept, nodes = prune_dense(graph, masks.reshape(-1, graph.n_edges))
    return kept.reshape(masks.shape), nodes.reshape(masks.shape[:-1] + (graph.n_src + 1,))


def bottleneck_rank(graph: Graph, rank_E: np.ndarray) -> int:
    """min over input→logits paths of the largest edge rank on the path (ranks 0 = best).

    Top-n sets are nested, so the pruned top-n circuit connects ``input`` to ``logits`` iff
    n > this value: the smallest connected n is ``bottleneck_rank + 1``. A min-max dynamic
    programme over the nodes in topological order (the source order, then ``logits``)."""
    S = graph.n_src
    node_of_edge = slot_owner(graph)[graph.edge_dst]
    best = np.full(S + 1, np.inf)
    best[0] = -np.inf
    order = np.argsort(node_of_edge, kind="stable")
    bounds = np.searchsorted(node_of_edge[order], np.arange(S + 2))
    for node in range(1, S + 1):
        into = order[bounds[node] : bounds[node + 1]]
        if into.size:
            best[node] = np.min(np.maximum(best[graph.edge_src[into]], rank_E[into]))
    return int(best[S]) if np.isfinite(best[S]) else -1
