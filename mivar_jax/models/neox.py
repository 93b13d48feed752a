"""GPT-NeoX family (Pythia, GPT-NeoX-20B): config and weights from HF names.

LayerNorm with biases, partial rotary embeddings (``rotary_pct`` / ``partial_rotary_factor`` of
each head, rotate-half pairs), attention and MLP in parallel (``use_parallel_residual``: both read
the layer's input), GELU MLP, untied unembedding. ``query_key_value`` fuses q, k, v head by head:
its output rows are [head 0: q k v, head 1: q k v, …], each of width d_head. HF Linear weights are
[out, in]. llama.cpp's GGUF (architecture ``gptneox``) stores the fused rows as [q of every head,
k of every head, v of every head]; ``gguf_name_map`` restores the per-head order.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mivar_jax.models.checkpoint import CheckpointError, GGUFFile, GGUFNameMap, Tensors, check_tied_head, identity
from mivar_jax.models.config import ModelConfig, rope_inv_freq
from mivar_jax.models.gpt2 import ACTIVATIONS

# Stored but legitimately unused: causal-mask and rotary buffers older transformers versions saved.
HF_UNUSED = re.compile(
    r"gpt_neox\.(layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)|rotary_emb\.inv_freq)"
)
GGUF_UNUSED = None


def config_from_hf(d: dict[str, Any], name: str) -> ModelConfig:
    activation = d.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{name}: hidden_act {activation!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    rope = dict(d.get("rope_parameters") or {})
    rope.update(d.get("rope_scaling") or {})
    try:
        D, H = int(d["hidden_size"]), int(d["num_attention_heads"])
        Dh = D // H
        fraction = float(d.get("rotary_pct", rope.get("partial_rotary_factor", 1.0)))
        theta = float(d.get("rotary_emb_base", rope.get("rope_theta", 10000.0)))
        return ModelConfig(
            name=name, family="gpt_neox", n_layers=int(d["num_hidden_layers"]), n_heads=H, n_kv_heads=H,
            d_model=D, d_head=Dh, d_mlp=int(d["intermediate_size"]), vocab_size=int(d["vocab_size"]),
            n_ctx=int(d.get("max_position_embeddings", 2048)), norm="layernorm",
            norm_eps=float(d.get("layer_norm_eps", 1e-5)), positional="rope",
            rope_inv_freq=rope_inv_freq(int(Dh * fraction), theta, rope), activation=ACTIVATIONS[activation],
            qkv_bias=bool(d.get("attention_bias", True)), o_bias=bool(d.get("attention_bias", True)), mlp_bias=True,
            tied_embeddings=bool(d.get("tie_word_embeddings", False)),
            parallel_attn_mlp=bool(d.get("use_parallel_residual", True)),
        )  # fmt: skip
    except KeyError as err:
        raise CheckpointError(f"{name}: config.json lacks {err}") from None
    except NotImplementedError as err:
        raise CheckpointError(f"{name}: {err}") from None


def params_from_hf(t: Tensors, cfg: ModelConfig) -> dict[str, Any]:
    L, H, D, Dh, F, V = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.vocab_size
    h = "gpt_neox.layers.{i}."
    qkv = t.stack(h + "attention.query_key_value.weight", L, (3 * D, D)).reshape(L, H, 3, Dh, D)
    w_q, w_k, w_v = (qkv[:, :, j].transpose(0, 1, 3, 2) for j in range(3))  # [L, H, D, Dh]
    ln = lambda name, shape=(D,): {
        "scale": t.stack(h + f"{name}.weight", L, shape), "bias": t.stack(h + f"{name}.bias", L, shape)
    }  # fmt: skip
    blocks = {
        "ln1": ln("input_layernorm"),
        "w_q": w_q,
        "w_k": w_k,
        "w_v": w_v,
        "w_o": t.stack(h + "attention.dense.weight", L, (D, D)).transpose(0, 2, 1).reshape(L, H, Dh, D),
        "ln2": ln("post_attention_layernorm"),
        "w_in": t.stack(h + "mlp.dense_h_to_4h.weight", L, (F, D)).transpose(0, 2, 1),
        "b_in": t.stack(h + "mlp.dense_h_to_4h.bias", L, (F,)),
        "w_out": t.stack(h + "mlp.dense_4h_to_h.weight", L, (D, F)).transpose(0, 2, 1),
        "b_out": t.stack(h + "mlp.dense_4h_to_h.bias", L, (D,)),
    }
    if cfg.qkv_bias:
        b = t.stack(h + "attention.query_key_value.bias", L, (3 * D,)).reshape(L, H, 3, Dh)
        blocks.update(b_q=b[:, :, 0], b_k=b[:, :, 1], b_v=b[:, :, 2])
    if cfg.o_bias:
        blocks["b_o"] = t.stack(h + "attention.dense.bias", L, (D,))
    params = {
        "tok_embed": t.get("gpt_neox.embed_in.weight", (V, D)),
        "blocks": blocks,
        "ln_f": {
            "scale": t.get("gpt_neox.final_layer_norm.weight", (D,)),
            "bias": t.get("gpt_neox.final_layer_norm.bias", (D,)),
        },
    }
    if not cfg.tied_embeddings:
        params["unembed"] = np.ascontiguousarray(t.get("embed_out.weight", (V, D)).T)
    else:
        check_tied_head(t, params["tok_embed"], "embed_out.weight")
    return params


def config_from_gguf(f: GGUFFile, name: str) -> ModelConfig:
    """The config of a GGUF file: its metadata read as HF config keys (``config_from_hf``); the
    activation, which GGUF does not record, is Pythia's exact GELU."""
    get = lambda key, default=...: f.meta(f"gptneox.{key}", default)
    D, H = int(get("embedding_length")), int(get("attention.head_count"))
    d = {
        "hidden_size": D, "num_attention_heads": H, "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"), "vocab_size": f.tensors["token_embd.weight"].shape[-1],
        "max_position_embeddings": get("context_length", 2048), "layer_norm_eps": get("attention.layer_norm_epsilon"),
        "rotary_pct": get("rope.dimension_count", D // H) / (D // H), "rotary_emb_base": get("rope.freq_base", 10000.0),
        "use_parallel_residual": bool(get("use_parallel_residual", True)),
        "attention_bias": "blk.0.attn_qkv.bias" in f.tensors, "tie_word_embeddings": "output.weight" not in f.tensors,
    }  # fmt: skip
    return config_from_hf(d, name)


def gguf_name_map(cfg: ModelConfig) -> GGUFNameMap:
    H, Dh = cfg.n_heads, cfg.d_head

    def per_head(w):  # rows [q | k | v] (each H·Dh) → [head 0: q k v, head 1: …]
        return w.reshape(3, H, Dh, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)

    m = {
        "gpt_neox.embed_in.weight": ("token_embd.weight", identity),
        "gpt_neox.final_layer_norm.weight": ("output_norm.weight", identity),
        "gpt_neox.final_layer_norm.bias": ("output_norm.bias", identity),
        "embed_out.weight": ("output.weight", identity),
    }
    for i in range(cfg.n_layers):
        for hf, gg, fix in (
            ("input_layernorm", "attn_norm", identity), ("attention.query_key_value", "attn_qkv", per_head),
            ("attention.dense", "attn_output", identity), ("post_attention_layernorm", "ffn_norm", identity),
            ("mlp.dense_h_to_4h", "ffn_up", identity), ("mlp.dense_4h_to_h", "ffn_down", identity),
        ):  # fmt: skip
            for kind in ("weight", "bias"):
                m[f"gpt_neox.layers.{i}.{hf}.{kind}"] = (f"blk.{i}.{gg}.{kind}", fix)
    return m
