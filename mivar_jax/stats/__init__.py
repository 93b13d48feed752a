"""Statistics over per-input scores (plain arrays in, small dataclasses out): intrinsic variability,
estimator noise against exact scores, the circuit bootstrap, and variance decomposition; and what
the paper's readers ask next: the margins of edges to the cut (scoring vs selection variance), the
prompts a stable circuit needs, stability at fixed faithfulness, and intervals for MIB's CPR and CMD."""

from mivar_jax.stats.bootstrap import (
    BOOTSTRAP_METHODS,
    BootstrapResult,
    bootstrap,
    jaccard_matrix,
    mask_stability,
    replicate_circuits,
)
from mivar_jax.stats.curves import CurveIntervals, curve_intervals
from mivar_jax.stats.decomposition import Decomposition, decompose
from mivar_jax.stats.faithful import FaithfulStability, faithful_stability
from mivar_jax.stats.intervals import bca_interval, percentile_interval
from mivar_jax.stats.intrinsic import EdgeVariability, edge_variability
from mivar_jax.stats.margins import SelectionNoise, selection_noise
from mivar_jax.stats.noise import EstimatorNoise, average_ranks, estimator_noise
from mivar_jax.stats.prompts import PromptsNeeded, prompts_needed

__all__ = [
    "BOOTSTRAP_METHODS",
    "BootstrapResult",
    "CurveIntervals",
    "Decomposition",
    "EdgeVariability",
    "EstimatorNoise",
    "FaithfulStability",
    "PromptsNeeded",
    "SelectionNoise",
    "average_ranks",
    "bca_interval",
    "bootstrap",
    "mask_stability",
    "replicate_circuits",
    "curve_intervals",
    "decompose",
    "edge_variability",
    "estimator_noise",
    "faithful_stability",
    "jaccard_matrix",
    "percentile_interval",
    "prompts_needed",
    "selection_noise",
]
