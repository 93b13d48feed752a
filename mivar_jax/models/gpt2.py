"""GPT-2 family (gpt2, gpt2-medium/large/xl, distilgpt2): config and weights from HF names.

HF GPT-2 stores Conv1D weights as [in, out]; ``c_attn`` packs q, k, v along its output axis,
each split into heads of width d_head. llama.cpp's GGUF stores them transposed ([out, in]).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mivar_jax.models.checkpoint import (
    CheckpointError,
    GGUFFile,
    GGUFNameMap,
    Tensors,
    check_tied_head,
    identity,
    transpose,
)
from mivar_jax.models.config import ModelConfig

# Stored but legitimately unused: the causal-mask buffers older transformers versions saved.
HF_UNUSED = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")
GGUF_UNUSED = None

ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def config_from_hf(d: dict[str, Any], name: str) -> ModelConfig:
    for key, bad in (
        ("scale_attn_by_inverse_layer_idx", True),
        ("scale_attn_weights", False),
        ("add_cross_attention", True),
    ):
        if d.get(key, not bad) == bad:
            raise CheckpointError(f"{name}: GPT-2 with {key}={bad} is not supported")
    activation = d.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{name}: activation {activation!r} is not supported (supported: {sorted(ACTIVATIONS)})")
    try:
        D, H = int(d["n_embd"]), int(d["n_head"])
        return ModelConfig(
            name=name,
            family="gpt2",
            n_layers=int(d["n_layer"]),
            n_heads=H,
            n_kv_heads=H,
            d_model=D,
            d_head=D // H,
            d_mlp=int(d.get("n_inner") or 4 * D),
            vocab_size=int(d["vocab_size"]),
            n_ctx=int(d["n_positions"]),
            norm="layernorm",
            norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
            positional="learned",
            activation=ACTIVATIONS[activation],
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            tied_embeddings=bool(d.get("tie_word_embeddings", True)),
        )
    except KeyError as err:
        raise CheckpointError(f"{name}: config.json lacks {err}") from None


def params_from_hf(t: Tensors, cfg: ModelConfig) -> dict[str, Any]:
    L, H, D, Dh, F, V = (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.vocab_size)
    pre = "transformer." if "transformer.wte.weight" in t else ""
    h = pre + "h.{i}."
    c_attn_w = t.stack(h + "attn.c_attn.weight", L, (D, 3 * D))  # [L, D, 3D]
    c_attn_b = t.stack(h + "attn.c_attn.bias", L, (3 * D,))

    def heads_w(w):  # [L, D, H*Dh] → [L, H, D, Dh]
        return w.reshape(L, D, H, Dh).transpose(0, 2, 1, 3)

    params = {
        "tok_embed": t.get(pre + "wte.weight", (V, D)),
        "pos_embed": t.get(pre + "wpe.weight", (cfg.n_ctx, D)),
        "blocks": {
            "ln1": {"scale": t.stack(h + "ln_1.weight", L, (D,)), "bias": t.stack(h + "ln_1.bias", L, (D,))},
            "w_q": heads_w(c_attn_w[..., :D]),
            "w_k": heads_w(c_attn_w[..., D : 2 * D]),
            "w_v": heads_w(c_attn_w[..., 2 * D :]),
            "b_q": c_attn_b[:, :D].reshape(L, H, Dh),
            "b_k": c_attn_b[:, D : 2 * D].reshape(L, H, Dh),
            "b_v": c_attn_b[:, 2 * D :].reshape(L, H, Dh),
            "w_o": t.stack(h + "attn.c_proj.weight", L, (D, D)).reshape(L, H, Dh, D),
            "b_o": t.stack(h + "attn.c_proj.bias", L, (D,)),
            "ln2": {"scale": t.stack(h + "ln_2.weight", L, (D,)), "bias": t.stack(h + "ln_2.bias", L, (D,))},
            "w_in": t.stack(h + "mlp.c_fc.weight", L, (D, F)),
            "b_in": t.stack(h + "mlp.c_fc.bias", L, (F,)),
            "w_out": t.stack(h + "mlp.c_proj.weight", L, (F, D)),
            "b_out": t.stack(h + "mlp.c_proj.bias", L, (D,)),
        },
        "ln_f": {"scale": t.get(pre + "ln_f.weight", (D,)), "bias": t.get(pre + "ln_f.bias", (D,))},
    }
    if not cfg.tied_embeddings:
        params["unembed"] = np.ascontiguousarray(t.get("lm_head.weight", (V, D)).T)
    else:
        check_tied_head(t, params["tok_embed"])
    return params


def config_from_gguf(f: GGUFFile, name: str) -> ModelConfig:
    """The config of a GGUF file: its metadata read as HF config keys (``config_from_hf``)."""
    get = lambda key, default=...: f.meta(f"gpt2.{key}", default)
    D = int(get("embedding_length"))
    d = {
        "n_embd": D, "n_head": get("attention.head_count"), "n_layer": get("block_count"),
        "n_inner": get("feed_forward_length", 4 * D), "vocab_size": f.tensors["token_embd.weight"].shape[-1],
        "n_positions": get("context_length"), "layer_norm_epsilon": get("attention.layer_norm_epsilon", 1e-5),
        "tie_word_embeddings": "output.weight" not in f.tensors,
    }  # fmt: skip
    return config_from_hf(d, name)


def gguf_name_map(cfg: ModelConfig) -> GGUFNameMap:
    m = {
        "wte.weight": ("token_embd.weight", identity),
        "wpe.weight": ("position_embd.weight", identity),
        "ln_f.weight": ("output_norm.weight", identity),
        "ln_f.bias": ("output_norm.bias", identity),
        "lm_head.weight": ("output.weight", identity),
    }
    for i in range(cfg.n_layers):
        for hf, gg, fn in (
            ("ln_1", "attn_norm", identity),
            ("attn.c_attn", "attn_qkv", transpose),
            ("attn.c_proj", "attn_output", transpose),
            ("ln_2", "ffn_norm", identity),
            ("mlp.c_fc", "ffn_up", transpose),
            ("mlp.c_proj", "ffn_down", transpose),
        ):
            m[f"h.{i}.{hf}.weight"] = (f"blk.{i}.{gg}.weight", fn)
            m[f"h.{i}.{hf}.bias"] = (f"blk.{i}.{gg}.bias", identity)
    return m
