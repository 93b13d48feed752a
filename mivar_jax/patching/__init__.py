"""The patching layer, under both the estimators and circuit evaluation: reference values (corrupted
run, zeros, dataset means), windows of the positions a patch can change, the clean run's states and
key/value caches, and slot gradients."""

from mivar_jax.patching.gradients import slot_gradients
from mivar_jax.patching.reference import (
    ABLATIONS,
    answer_metric,
    check_ablation,
    corrupted_run,
    dataset_means,
    reference_values,
    run_nodes,
)
from mivar_jax.patching.states import CleanState, clean_state, kv_caches, layer_params, residual_states, run_to_answer
from mivar_jax.patching.windows import first_changes, window_start, windows

__all__ = [
    "corrupted_run",
    "ABLATIONS",
    "CleanState",
    "answer_metric",
    "check_ablation",
    "clean_state",
    "dataset_means",
    "first_changes",
    "kv_caches",
    "layer_params",
    "reference_values",
    "residual_states",
    "run_nodes",
    "run_to_answer",
    "slot_gradients",
    "window_start",
    "windows",
]
