"""What patched runs read: the reference values that edges are patched to (corrupted run, zeros, or
dataset means), the clean run, and the metric read off the residual stream."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from mivar_jax.models.config import ModelConfig
from mivar_jax.models.layers import norm, softcap, unembed
from mivar_jax.models.transformer import forward
from mivar_jax.tasks.data import TaskBatch, TaskData
from mivar_jax.tasks.metrics import get_metric, logit_diff
from mivar_jax.tasks.noise import corrupted_input

ABLATIONS = ("patch", "zero", "mean")


def answer_metric(
    cfg: ModelConfig,
    params,
    x_NxD: Float[Array, "N D"],
    correct: Int[Array, "N Ac"],
    incorrect: Int[Array, "N Ai"],
    metric: str,
) -> Float[Array, " N"]:
    """The task metric from final residual-stream vectors at the answer position.

    ``logit_diff`` needs only the answers' logits: they are computed alone (a gather of unembedding
    columns), the other metrics from the full distribution."""
    if metric != "logit_diff":
        return get_metric(metric)(unembed(cfg, params, x_NxD), correct, incorrect)
    w_u = params["tok_embed"] if cfg.tied_embeddings else params["unembed"].T  # [V, D]
    ids = jnp.concatenate([correct, incorrect], -1)
    h = norm(cfg, params["ln_f"], x_NxD)
    # A = Ac + Ai: the answers' logits, float32 as ``unembed``'s
    logits_NxA = jnp.einsum("nd,nkd->nk", h, w_u[jnp.maximum(ids, 0)], preferred_element_type=jnp.float32)
    logits_NxA = softcap(logits_NxA, cfg.logit_softcap)
    a, b = correct.shape[1], incorrect.shape[1]
    remap = lambda ids_, offset: jnp.where(ids_ >= 0, offset + jnp.arange(ids_.shape[1]), -1)
    return logit_diff(logits_NxA, remap(correct, 0), remap(incorrect, a)[:, :b])


def run_nodes(
    cfg: ModelConfig, params, b: TaskBatch, metric: str, input_embeds=None
) -> tuple[Float[Array, "S N P D"], Float[Array, " N"]]:
    """Node outputs and the metric of a plain run on the clean prompts (or on ``input_embeds``)."""
    logits, nodes = forward(
        cfg, params, b.clean, b.attention_mask, input_embeds=input_embeds, logit_positions=b.answer_pos, nodes=True
    )
    return nodes, get_metric(metric)(logits, b.correct, b.incorrect)


@functools.partial(jax.jit, static_argnums=0)
def mean_node_outputs(cfg: ModelConfig, params, b: TaskBatch, n_real: Int[Array, ""]):
    """Σ over real positions of the first ``n_real`` inputs of each clean node output, and the count."""
    _, nodes = forward(cfg, params, b.clean, b.attention_mask, logit_positions=b.answer_pos, nodes=True)
    weight = (b.attention_mask * (jnp.arange(b.clean.shape[0]) < n_real)[:, None]).astype(nodes.dtype)
    return jnp.einsum("snpd,np->sd", nodes, weight), weight.sum()


def dataset_means(
    model, data: TaskData, batch_size: int, ablation: str = "mean"
) -> Float[Array, "S 1 1 D"] | Float[Array, ""]:
    """Mean ablation values: each node's clean output averaged over the dataset's inputs and real
    positions (one D-vector per node, broadcast over inputs and positions); a placeholder scalar
    for the other ``ablation`` kinds (which read no means)."""
    if ablation != "mean":
        return jnp.zeros(())
    total, count = 0.0, 0.0
    for b, rows in data.batches(batch_size):
        s, c = mean_node_outputs(model.config, model.params, b, len(rows))
        total, count = total + s, count + c
    return (total / count)[:, None, None, :]


def corrupted_run(
    cfg: ModelConfig, params, b: TaskBatch, noise, noise_seed
) -> tuple[Float[Array, "N V"], Float[Array, "S N P D"], Float[Array, "N P D"]]:
    """The corrupted prompts' run with counterfactual noise: (logits at the answer positions, node
    outputs z̃, input x̃)."""
    x_ref = corrupted_input(cfg, params, b, noise, noise_seed)
    logits, nodes = forward(
        cfg, params, b.corrupted, b.attention_mask, input_embeds=x_ref, logit_positions=b.answer_pos, nodes=True
    )
    return logits, nodes, x_ref


def reference_values(
    cfg: ModelConfig, params, b: TaskBatch, ablation: str, noise, noise_seed, means: jax.Array | None
) -> tuple[Float[Array, "S N P D"], Float[Array, "N P D"]]:
    """What patched edges read instead of the clean values, ``(z̃ [S, N, P, D], x̃ [N, P, D])``:
    the corrupted run's node outputs and input (with counterfactual noise), zeros, or means."""
    N, P = b.clean.shape
    S, D = cfg.graph.n_src, cfg.d_model
    dtype = params["tok_embed"].dtype
    if ablation == "patch":
        _, nodes, x_ref = corrupted_run(cfg, params, b, noise, noise_seed)
        return nodes, x_ref
    if ablation == "zero":
        return jnp.zeros((S, N, P, D), dtype), jnp.zeros((N, P, D), dtype)
    if ablation == "mean":
        z = jnp.broadcast_to(means.astype(dtype), (S, N, P, D))
        return z, z[0]
    raise ValueError(f"unknown ablation {ablation!r}; choose from {ABLATIONS}")


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose from {list(ABLATIONS)}")
