"""Counterfactual noise: Gaussian noise on the corrupted prompt's input embeddings.

At every real position where the corrupted prompt differs from the clean one, the ``input`` node's
output (token + position embeddings) of the corrupted prompt gets

    σ · r̄ · ε / √D,    ε ~ N(0, I_D),

so the noise vector's norm is about σ times r̄, the mean L2 norm of the model's token embeddings
(rows of the embedding matrix, times the config's ``embed_scale``: the input node's scale). ε is drawn from a key folded from ``(noise_seed, uid, position)``:
an example keeps its noise when the dataset is sliced, re-batched or re-padded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mivar_jax.models.layers import embed, position_ids


def mean_embedding_norm(params) -> jax.Array:
    """Mean L2 norm of the token-embedding rows."""
    return jnp.linalg.norm(params["tok_embed"].astype(jnp.float32), axis=-1).mean()


def noise_vectors(noise_seed: int | jax.Array, uid: jax.Array, n_positions: int, d_model: int) -> jax.Array:
    """Standard normal ε [N, P, D], one draw per (seed, example uid, position)."""
    base = jax.random.key(noise_seed)

    def per_example(u):
        key = jax.random.fold_in(base, u)
        return jax.vmap(lambda p: jax.random.normal(jax.random.fold_in(key, p), (d_model,)))(jnp.arange(n_positions))

    return jax.vmap(per_example)(jnp.asarray(uid).astype(jnp.uint32))


def corrupted_input(cfg, params, batch, noise: float | jax.Array, noise_seed: int | jax.Array) -> jax.Array:
    """Pure (jit-able) form: the corrupted prompts' ``input`` node outputs [N, P, D] of a
    ``TaskBatch``, plus noise of amplitude ``noise`` at the positions that differ from the clean prompt."""
    x = embed(cfg, params, batch.corrupted, position_ids(batch.attention_mask))
    eps = noise_vectors(noise_seed, batch.uid, batch.corrupted.shape[1], cfg.d_model)
    scale = noise * mean_embedding_norm(params) * cfg.embed_scale / np.sqrt(cfg.d_model)
    return x + (scale * eps * batch.differs[..., None]).astype(x.dtype)


_corrupted_input_jit = jax.jit(corrupted_input, static_argnums=0)


def corrupted_embeddings(model, data, rows: np.ndarray | None = None) -> jax.Array:
    """The corrupted prompts' ``input`` node outputs [N, P, D] of a TaskData (or of its ``rows``),
    with ``data.noise`` applied."""
    return _corrupted_input_jit(model.config, model.params, data.batch(rows), data.noise, data.noise_seed)
