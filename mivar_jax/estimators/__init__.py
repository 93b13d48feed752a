"""Attribution estimators with per-input scores: exact patching, EAP, EAP-IG, clean-corrupted, CEAP."""

from mivar_jax.estimators.attribute import LEVELS, METHODS, attribute
from mivar_jax.estimators.common import ABLATIONS
from mivar_jax.estimators.gradient import IG_CONVENTIONS, POOLINGS
from mivar_jax.estimators.scores import Scores

__all__ = ["ABLATIONS", "IG_CONVENTIONS", "LEVELS", "METHODS", "POOLINGS", "Scores", "attribute"]
