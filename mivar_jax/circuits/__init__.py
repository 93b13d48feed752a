"""Circuits: selection (top-n, threshold, greedy) from aggregated scores in one edge order, pruning,
and the Circuit object (graph JSON, MIB export, DOT/PNG drawing). Aggregation: ``mv.aggregate``;
evaluation: ``mivar_jax.evaluation``."""

from mivar_jax.circuits.circuit import Circuit
from mivar_jax.circuits.pruning import prune, prune_dense
from mivar_jax.circuits.selection import SELECTIONS, edge_order, minimal_connected, ranking, select, topn_masks

__all__ = [
    "SELECTIONS",
    "Circuit",
    "edge_order",
    "minimal_connected",
    "prune",
    "prune_dense",
    "ranking",
    "select",
    "topn_masks",
]
