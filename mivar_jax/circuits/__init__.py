"""Circuits: aggregation of per-input scores, selection (top-n, threshold, greedy), pruning, and
the Circuit object (graph JSON, MIB export, DOT/PNG drawing). Evaluation: ``mivar_jax.evaluation``."""

from mivar_jax.circuits.circuit import Circuit
from mivar_jax.circuits.pruning import prune
from mivar_jax.circuits.selection import SELECTIONS, aggregate, minimal_connected, ranking, select, topn_masks

__all__ = ["SELECTIONS", "Circuit", "aggregate", "minimal_connected", "prune", "ranking", "select", "topn_masks"]
