"""Tasks and data: IOI, SVA and Greater-Than with counterfactuals, paraphrase families, noise."""

from mivar_jax.tasks.data import Example, TaskBatch, TaskData, check_for_model
from mivar_jax.tasks.evaluate import ModelEvaluation, evaluate_model
from mivar_jax.tasks.metrics import get_metric, kl_divergence, logit_diff, prob_diff
from mivar_jax.tasks.noise import corrupted_embeddings, mean_embedding_norm
from mivar_jax.tasks.registry import capacity, get_task, list_tasks, make

list = list_tasks  # noqa: A001 - the documented name is mv.tasks.list()

__all__ = [
    "Example",
    "ModelEvaluation",
    "TaskBatch",
    "TaskData",
    "capacity",
    "check_for_model",
    "corrupted_embeddings",
    "evaluate_model",
    "get_metric",
    "get_task",
    "kl_divergence",
    "list",
    "list_tasks",
    "logit_diff",
    "make",
    "mean_embedding_norm",
    "prob_diff",
]
