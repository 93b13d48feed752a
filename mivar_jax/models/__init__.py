"""Flax ports of GPT-2 and Llama-family models in graph form, and their loaders."""

from mivar_jax.models.checkpoint import CheckpointError
from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import EdgeMix, ProjectionTaps, Replace, Taps, Window
from mivar_jax.models.loading import load_model, registered_models
from mivar_jax.models.model import Model, TokenBatch, pad_batch
from mivar_jax.models.params import Transformer, init_params, params_of
from mivar_jax.models.transformer import forward

__all__ = [
    "CheckpointError",
    "Model",
    "ModelConfig",
    "TokenBatch",
    "Transformer",
    "EdgeMix",
    "ProjectionTaps",
    "Replace",
    "Taps",
    "Window",
    "forward",
    "init_params",
    "load_model",
    "pad_batch",
    "params_of",
    "registered_models",
]
