"""Studies: config-driven perturbation sweeps into resumable run directories, with their analysis."""

from mivar_jax.study import paper
from mivar_jax.study.analysis import StudyResults, analyse
from mivar_jax.study.config import Cell, ConfigError, StudyConfig, default_config
from mivar_jax.study.rundir import RunDir, RunDirError
from mivar_jax.study.runner import Reporter, Study

__all__ = [
    "Cell",
    "ConfigError",
    "Reporter",
    "RunDir",
    "RunDirError",
    "Study",
    "StudyConfig",
    "StudyResults",
    "analyse",
    "default_config",
    "paper",
]
