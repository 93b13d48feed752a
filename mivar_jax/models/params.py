"""Parameters of the decoder as Flax NNX modules, and their pure pytree.

Every block parameter is stacked on a leading layer axis L, so forward passes ``lax.scan`` over
layers. Shapes: H query heads, K key/value heads, D model width, Dh head width, F MLP width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mivar_jax.models.config import ModelConfig

Params = dict[str, Any]


class Norm(nnx.Module):
    """LayerNorm (scale, bias) or RMSNorm (scale), optionally stacked over layers."""

    def __init__(self, cfg: ModelConfig, lead: tuple[int, ...], *, rngs: nnx.Rngs, dtype):
        shape = lead + (cfg.d_model,)
        self.scale = nnx.Param(jnp.ones(shape, dtype) + 0.02 * jax.random.normal(rngs.params(), shape, dtype))
        self.bias = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, dtype)) if cfg.norm == "layernorm" else None
        )


class Blocks(nnx.Module):
    """All L blocks' parameters, stacked on axis 0."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, scale: float):
        L, H, K, D, Dh, F = (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head, cfg.d_mlp)

        def normal(*shape):
            return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))

        self.ln1 = Norm(cfg, (L,), rngs=rngs, dtype=dtype) if cfg.pre_norms else None
        self.w_q, self.w_k, self.w_v = (normal(L, H, D, Dh), normal(L, K, D, Dh), normal(L, K, D, Dh))
        self.b_q = normal(L, H, Dh) if cfg.qkv_bias else None
        self.b_k = normal(L, K, Dh) if cfg.qkv_bias else None
        self.b_v = normal(L, K, Dh) if cfg.qkv_bias else None
        near_one = lambda n: nnx.Param(jnp.ones((L, n), dtype) + 0.02 * jax.random.normal(rngs.params(), (L, n), dtype))
        all_heads = cfg.qk_norm == "all"
        self.q_norm = near_one(H * Dh if all_heads else Dh) if cfg.qk_norm else None
        self.k_norm = near_one(K * Dh if all_heads else Dh) if cfg.qk_norm else None
        self.w_o = normal(L, H, Dh, D)
        self.b_o = normal(L, D) if cfg.o_bias else None
        self.ln1_post = Norm(cfg, (L,), rngs=rngs, dtype=dtype) if cfg.post_norms else None
        self.ln2 = Norm(cfg, (L,), rngs=rngs, dtype=dtype) if cfg.pre_norms else None
        self.w_in = normal(L, D, F)
        self.b_in = normal(L, F) if cfg.mlp_bias else None
        self.w_gate = normal(L, D, F) if cfg.gated_mlp else None
        self.b_gate = normal(L, F) if cfg.gated_mlp and cfg.mlp_bias else None
        self.w_out = normal(L, F, D)
        self.b_out = normal(L, D) if cfg.mlp_bias else None
        self.ln2_post = Norm(cfg, (L,), rngs=rngs, dtype=dtype) if cfg.post_norms else None


class Transformer(nnx.Module):
    """Flax NNX parameter container of a decoder; ``params(module)`` gives the pure pytree.

    ``Transformer(cfg, rngs=nnx.Rngs(0))`` draws random weights (N(0, scale²), norms ≈ 1),
    used for tests and benchmarks; the loaders fill the same structure from checkpoints.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, scale: float = 0.02):
        V, D = cfg.vocab_size, cfg.d_model
        self.tok_embed = nnx.Param(scale * jax.random.normal(rngs.params(), (V, D), dtype))
        self.pos_embed = (
            nnx.Param(scale * jax.random.normal(rngs.params(), (cfg.n_ctx, D), dtype))
            if cfg.positional == "learned"
            else None
        )
        self.blocks = Blocks(cfg, rngs=rngs, dtype=dtype, scale=scale)
        self.ln_f = Norm(cfg, (), rngs=rngs, dtype=dtype)
        self.unembed = (
            None if cfg.tied_embeddings else nnx.Param(scale * jax.random.normal(rngs.params(), (D, V), dtype))
        )


def init_params(cfg: ModelConfig, key: jax.Array, *, dtype=jnp.float32, scale: float = 0.02) -> Params:
    """Random parameters as a pure pytree (see ``Transformer``)."""
    return params_of(Transformer(cfg, rngs=nnx.Rngs(params=key), dtype=dtype, scale=scale))


def params_of(module: Transformer) -> Params:
    """The pure-dict pytree of a ``Transformer`` module (absent optional weights are absent)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def param_shapes(cfg: ModelConfig) -> Params:
    """Expected shapes of every parameter, as the pytree of ``init_params`` (no allocation)."""
    module = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return jax.tree.map(lambda x: tuple(x.shape), params_of(module))


def layer_params(params: Params, layer) -> Params:
    """Block parameters of one layer (``layer`` may be a traced index)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False), params["blocks"])
