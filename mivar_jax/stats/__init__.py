"""Statistics over per-input scores (plain arrays in, small dataclasses out): intrinsic variability,
estimator noise against exact scores, the circuit bootstrap, and variance decomposition."""

from mivar_jax.stats.bootstrap import BOOTSTRAP_METHODS, BootstrapResult, bootstrap, jaccard_matrix
from mivar_jax.stats.decomposition import Decomposition, decompose
from mivar_jax.stats.intervals import bca_interval, percentile_interval
from mivar_jax.stats.intrinsic import EdgeVariability, edge_variability
from mivar_jax.stats.noise import EstimatorNoise, average_ranks, estimator_noise

__all__ = [
    "BOOTSTRAP_METHODS",
    "BootstrapResult",
    "Decomposition",
    "EdgeVariability",
    "EstimatorNoise",
    "average_ranks",
    "bca_interval",
    "bootstrap",
    "decompose",
    "edge_variability",
    "estimator_noise",
    "jaccard_matrix",
    "percentile_interval",
]
