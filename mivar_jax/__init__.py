"""mivar_jax: circuit discovery as statistical estimation, in JAX.

import mivar_jax as mv
model = mv.load_model("smollm2-135m")
"""

from mivar_jax import circuits, models, stats, study, tasks
from mivar_jax._shards import ScoreShards
from mivar_jax.aggregation import aggregate
from mivar_jax.circuits import Circuit
from mivar_jax.estimators import attribute
from mivar_jax.evaluation import CircuitEvaluation, CurveResult, evaluate, evaluate_curve
from mivar_jax.graph import Graph, GraphJSON
from mivar_jax.masks import LearnedMasks, learn_mask
from mivar_jax.models import CheckpointError, Model, ModelConfig, load_model, registered_models
from mivar_jax.scores import Scores
from mivar_jax.study import Study, StudyConfig
from mivar_jax.study.plan import Plan, plan

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Circuit",
    "CircuitEvaluation",
    "CurveResult",
    "circuits",
    "stats",
    "study",
    "Study",
    "StudyConfig",
    "Plan",
    "plan",
    "evaluate",
    "evaluate_curve",
    "Scores",
    "ScoreShards",
    "aggregate",
    "attribute",
    "Graph",
    "GraphJSON",
    "Model",
    "ModelConfig",
    "load_model",
    "learn_mask",
    "LearnedMasks",
    "models",
    "tasks",
    "registered_models",
]
