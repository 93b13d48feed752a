"""Selection: from aggregated edge scores to a pruned circuit.

Ranking value: |score| (``absolute=True``, the reference default) or the signed score.
Unscored edges (NaN for every input, e.g. an exact run on a subset) are never selected; a NaN
among finite per-input scores, or ±inf anywhere, is an error (as in ``mv.stats``).

The order of edges, one for the whole package (``edge_order``: top-n selection, the bootstrap's
replicate circuits, faithfulness curves, ``minimal_connected``): the highest ranking value first,
ties → the lower edge index (the Graph's order), unscored edges last.

- ``topn``: the n first edges of that order; ``topn`` also counts the edges left out that tie
  with the n-th.
- ``threshold``: every edge whose ranking value is ≥ the threshold.
- ``greedy`` (the reference library's): grow the circuit backwards from ``logits``, each time
  adding the best-ranked edge into a node already in the circuit, until n edges.

Pruning (``circuits.pruning``) then removes the edges not on an input→logits path; ``n_edges``
counts edges before pruning and the Circuit reports both counts.
"""

from __future__ import annotations

import functools
import heapq

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from mivar_jax._checks import check_int, check_scores_finite
from mivar_jax._shards import ScoreShards
from mivar_jax.aggregation import aggregate
from mivar_jax.circuits.circuit import Circuit
from mivar_jax.circuits.pruning import bottleneck_rank, prune, slot_owner
from mivar_jax.graph import Graph
from mivar_jax.scores import Scores

SELECTIONS = ("topn", "threshold", "greedy")


def ranking(values: Float[Array, "... E"], absolute: bool = True) -> jax.Array:
    """The value edges are ranked by: |score| or score (−0 = +0, a tie), with NaN (unscored) last."""
    v = jnp.abs(values) if absolute else jnp.where(values == 0, 0.0, values)  # lax.top_k ranks +0 above −0
    return jnp.where(jnp.isnan(v), -jnp.inf, v)


@functools.partial(jax.jit, static_argnames=("absolute", "n"))
def edge_order(values: Float[Array, "... E"], absolute: bool = True, n: int | None = None) -> jax.Array:
    """[..., n] int: the edges in ranking order, best first, ties → lower edge index, unscored
    last (the n first; all E by default). The package's one edge order (``lax.top_k``'s tie rule)."""
    return jax.lax.top_k(ranking(values, absolute), values.shape[-1] if n is None else n)[1]


@functools.partial(jax.jit, static_argnames=("n", "absolute"))
def topn(values_CxE: Float[Array, "C E"], n: int, absolute: bool = True) -> tuple[Bool[Array, "C E"], jax.Array]:
    """([C, E] bool: the n first edges of each row in ``edge_order``, [C] int: the edges left out
    whose ranking value equals the n-th's — those another tie rule could have chosen)."""
    rank = ranking(values_CxE, absolute)
    idx = edge_order(values_CxE, absolute, n)
    rows = jnp.arange(values_CxE.shape[0])[:, None]
    masks = jnp.zeros(values_CxE.shape, bool).at[rows, idx].set(True)
    # the n-th value from the masks: reading top_k's values, or its indices twice, makes XLA:CPU
    # lower top_k to a full sort (~8× slower here)
    nth = jnp.min(jnp.where(masks, rank, jnp.inf), axis=1, keepdims=True)
    return masks, ((rank == nth) & ~masks).sum(1)


def topn_masks(values_CxE: Float[Array, "C E"], n: int, absolute: bool = True) -> Bool[Array, "C E"]:
    """[C, E] bool: the n first edges of each row in ``edge_order``; jit, vectorised."""
    return topn(values_CxE, n, absolute)[0]


def greedy_mask(graph: Graph, values_E: np.ndarray, n: int, absolute: bool = True) -> np.ndarray:
    """[E] bool: the reference library's greedy selection of n edges, grown from ``logits``."""
    rank = np.asarray(ranking(jnp.asarray(values_E), absolute))
    node_of_edge = slot_owner(graph)[graph.edge_dst]
    into = {node: np.nonzero(node_of_edge == node)[0] for node in range(graph.n_src + 1)}
    mask = np.zeros(graph.n_edges, bool)
    heap: list[tuple[float, int]] = []
    in_circuit = np.zeros(graph.n_src + 1, bool)

    def open_node(node):
        in_circuit[node] = True
        for e in into[node]:
            if np.isfinite(rank[e]):
                heapq.heappush(heap, (-rank[e], int(e)))

    open_node(graph.n_src)
    taken = 0
    while heap and taken < n:
        _, e = heapq.heappop(heap)
        mask[e] = True
        taken += 1
        src = int(graph.edge_src[e])
        if not in_circuit[src]:
            open_node(src)
    return mask


def aggregated(scores, aggregation: str, graph: Graph | None) -> tuple[np.ndarray, Graph]:
    """The aggregated edge scores [E] to rank and their Graph, from a Scores (aggregated with
    ``aggregation``) or an [E] array with ``graph=``; NaN/inf refused (unscored edges allowed)."""
    if isinstance(scores, Scores):
        if scores.level != "edge":
            raise ValueError("circuits are selected from edge-level scores; got node-level scores")
        if graph is not None and graph != scores.graph:
            raise ValueError(f"scores are for {scores.graph}, not {graph}")
        if not isinstance(scores.per_input, ScoreShards):  # shards: checked as they were written
            check_scores_finite(scores.per_input, "scores", allow_unscored=True)
        return np.asarray(aggregate(scores, aggregation)), scores.graph
    if graph is None:
        raise ValueError("pass graph= with an array of aggregated scores")
    values = np.asarray(scores, np.float32)
    if values.shape != (graph.n_edges,):
        raise ValueError(f"aggregated scores must have shape ({graph.n_edges},) for {graph}, got {values.shape}")
    check_scores_finite(values, "aggregated scores", allow_unscored=True)
    return values, graph


def select(
    scores,
    n_edges: int | None = None,
    *,
    threshold: float | None = None,
    method: str | None = None,
    absolute: bool = True,
    aggregation: str = "mean",
    graph: Graph | None = None,
    prune_circuit: bool = True,
) -> Circuit:
    """A pruned circuit from ``scores``: a Scores (aggregated with ``aggregation``) or an array
    [E] of aggregated scores with ``graph=``. ``method`` defaults to ``topn`` with ``n_edges``
    and to ``threshold`` with ``threshold``; ``greedy`` takes ``n_edges``."""
    values, graph = aggregated(scores, aggregation, graph)
    method = method or ("threshold" if threshold is not None else "topn")
    if method not in SELECTIONS:
        raise ValueError(f"unknown selection method {method!r}; choose from {list(SELECTIONS)}")
    n_scored = int(np.isfinite(values).sum())
    if method == "threshold":
        if threshold is None or n_edges is not None:
            raise ValueError("method='threshold' takes threshold= (and no n_edges)")
        mask = np.asarray(ranking(jnp.asarray(values), absolute) >= threshold)
    else:
        if n_edges is None or threshold is not None:
            raise ValueError(f"method={method!r} takes n_edges= (and no threshold)")
        n_edges = check_int(n_edges, "n_edges", high=n_scored)  # at most the scored edges
        if method == "topn":
            mask = np.asarray(topn_masks(jnp.asarray(values)[None], int(n_edges), absolute))[0]
        else:
            mask = greedy_mask(graph, values, int(n_edges), absolute)
    n_selected = int(mask.sum())
    if prune_circuit:
        mask = np.asarray(prune(graph, mask)[0])
    return Circuit(graph, mask, scores=values, n_selected=n_selected)


def minimal_connected(scores, *, absolute: bool = True, aggregation: str = "mean", graph: Graph | None = None) -> int:
    """The smallest n whose pruned top-n circuit connects ``input`` to ``logits`` (0 if none)."""
    values, graph = aggregated(scores, aggregation, graph)
    position = np.empty(values.size, np.float64)
    position[np.asarray(edge_order(jnp.asarray(values), absolute))] = np.arange(values.size)
    position[np.isnan(values)] = np.inf  # unscored
    return bottleneck_rank(graph, position) + 1
