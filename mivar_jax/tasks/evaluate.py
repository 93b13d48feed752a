"""How well the full model does a task, on clean and on corrupted prompts."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from mivar_jax.models.transformer import forward
from mivar_jax.tasks.data import TaskData, check_for_model
from mivar_jax.tasks.metrics import get_metric
from mivar_jax.tasks.noise import corrupted_input


@dataclasses.dataclass(frozen=True)
class ModelEvaluation:
    """Per-input metric values and their summaries. Accuracy = share of inputs with metric > 0
    (IOI: logit(IO) > logit(S); SVA: agreeing forms ahead on average; Greater-Than: more mass on
    the greater answers)."""

    task: str
    metric: str
    clean: np.ndarray
    corrupted: np.ndarray

    @property
    def clean_accuracy(self) -> float:
        return float((self.clean > 0).mean())

    @property
    def corrupted_accuracy(self) -> float:
        return float((self.corrupted > 0).mean())

    def summary(self) -> dict[str, float]:
        return {
            "n": int(self.clean.size),
            "clean_accuracy": self.clean_accuracy,
            "clean_metric_mean": float(self.clean.mean()),
            "clean_metric_std": float(self.clean.std()),
            "corrupted_accuracy": self.corrupted_accuracy,
            "corrupted_metric_mean": float(self.corrupted.mean()),
            "corrupted_metric_std": float(self.corrupted.std()),
        }

    def __str__(self) -> str:
        s = self.summary()
        return (
            f"{self.task} ({self.metric}, n={s['n']}): clean accuracy {s['clean_accuracy']:.1%}, "
            f"metric {s['clean_metric_mean']:+.3f} ± {s['clean_metric_std']:.3f}; corrupted accuracy "
            f"{s['corrupted_accuracy']:.1%}, metric {s['corrupted_metric_mean']:+.3f} ± {s['corrupted_metric_std']:.3f}"
        )


def evaluate_model(model, data: TaskData, *, batch_size: int = 64) -> ModelEvaluation:
    """The task metric of the full model on every clean and corrupted prompt (noise applied)."""
    check_for_model(data, model)
    metric = get_metric(data.metric)
    clean, corrupted = [], []
    for b, rows in data.batches(batch_size):
        c, k = _metrics(metric, model.config, model.params, b, data.noise, data.noise_seed)
        clean.append(np.asarray(c)[: len(rows)])
        corrupted.append(np.asarray(k)[: len(rows)])
    return ModelEvaluation(data.task, data.metric, np.concatenate(clean), np.concatenate(corrupted))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _metrics(metric, cfg, params, b, noise, noise_seed):
    clean_logits = forward(cfg, params, b.clean, b.attention_mask, logit_positions=b.answer_pos)
    corr_embeds = corrupted_input(cfg, params, b, noise, noise_seed)
    corr_logits = forward(
        cfg, params, b.corrupted, b.attention_mask, input_embeds=corr_embeds, logit_positions=b.answer_pos
    )
    return metric(clean_logits, b.correct, b.incorrect), metric(corr_logits, b.correct, b.incorrect)
