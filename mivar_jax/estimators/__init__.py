"""Attribution estimators with per-input scores, in a registry: exact patching, EAP, EAP-IG,
clean-corrupted, CEAP."""

from mivar_jax.estimators.attribute import LEVELS, METHODS, attribute
from mivar_jax.estimators.gradient import IG_CONVENTIONS, POOLINGS
from mivar_jax.estimators.registry import ESTIMATORS, Estimator, Options, register

__all__ = [
    "ESTIMATORS",
    "IG_CONVENTIONS",
    "LEVELS",
    "METHODS",
    "POOLINGS",
    "Estimator",
    "Options",
    "attribute",
    "register",
]
