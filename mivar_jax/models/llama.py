"""Llama family (Llama 2/3.x, SmolLM/SmolLM2, Qwen2/2.5, Qwen3, Mistral, Phi-3, Gemma 2/3, OLMo 2):
config and weights from HF names.

RMSNorm, RoPE (rotate-half pairs, HF convention; partial with Phi-3's ``partial_rotary_factor``)
with optional Llama-3 / linear scaling, grouped-query attention, SwiGLU MLP. Qwen2 adds q/k/v
biases; Qwen3 per-head QK-norm; Mistral (and Qwen/Phi-3 when configured) sliding-window attention;
Phi-3 fuses q/k/v (``qkv_proj``) and gate/up (``gate_up_proj``). Gemma 2/3: GeGLU, norms before
and after each sublayer with (1 + w) weights (folded into the scales here), √D-scaled embeddings,
``query_pre_attn_scalar``, soft-capped logits (Gemma 2), sliding windows on alternating layers,
Gemma 3's per-head QK-norm and local RoPE base. OLMo 2: norms only after the sublayers, QK-norm
over all heads' projections. HF Linear weights are [out, in].
llama.cpp permutes the rows of Llama's q/k projections for its interleaved RoPE;
``gguf_name_map`` undoes that permutation (Qwen, Gemma and OLMo 2 GGUFs are not permuted; Gemma's
norm weights are stored as 1 + w).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import numpy as np

from mivar_jax.models.checkpoint import CheckpointError, GGUFFile, GGUFNameMap, Tensors, check_tied_head, identity
from mivar_jax.models.config import ModelConfig, rope_inv_freq

_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "olmo2")
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
# Stored but legitimately unused: rotary inv_freq buffers (older transformers versions saved them);
# in GGUF, llama.cpp's Llama 3 rope factors (read by config_from_gguf, not as a parameter).
HF_UNUSED = re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
GGUF_UNUSED = re.compile(r"rope_freqs\.weight")


def windows_from_hf(d: dict[str, Any], n_layers: int) -> tuple[int, ...]:
    """Per-layer sliding-window spans (0: full attention) from HF's ``sliding_window``,
    ``layer_types`` (else every layer, or Qwen's layers from ``max_window_layers`` on) and
    Qwen's ``use_sliding_window``; () when no layer slides."""
    span = d.get("sliding_window")
    if not span or (d.get("model_type", "").startswith("qwen") and not d.get("use_sliding_window", False)):
        return ()
    first = int(d.get("max_window_layers", 0)) if d.get("model_type", "").startswith("qwen") else 0
    types = d.get("layer_types") or ["sliding_attention" if i >= first else "full" for i in range(n_layers)]
    spans = tuple(int(span) if t == "sliding_attention" else 0 for t in types)
    return spans if any(spans) else ()


def rope_from_hf(d: dict[str, Any], d_head: int, layer_type: str = "full_attention") -> tuple[float, ...]:
    """Rotary inverse frequencies from HF's ``rope_parameters`` (per layer type where it has them:
    Gemma 3) / ``rope_scaling`` / ``rope_theta`` and ``partial_rotary_factor`` (the first
    ⌊d_head · factor⌋ dimensions rotate)."""
    rope = dict(d.get("rope_parameters") or {})
    rope = dict(rope.get(layer_type) or {}) if "full_attention" in rope else rope
    rope.update(d.get("rope_scaling") or {} if layer_type == "full_attention" else {})
    if "type" in rope:  # pre-4.45 spelling of rope_type
        rope["rope_type"] = rope["type"]
    theta = "rope_theta" if layer_type == "full_attention" else "rope_local_base_freq"
    theta = float(d.get(theta, rope.get("rope_theta", 10000.0)))
    factor = float(d.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0)))
    return rope_inv_freq(int(d_head * factor), theta, rope)


def config_from_hf(d: dict[str, Any], name: str) -> ModelConfig:
    family = d.get("model_type")
    if family not in _FAMILIES:
        raise CheckpointError(f"{name}: model_type {family!r} is not a Llama-family model ({_FAMILIES})")
    act = d.get("hidden_activation") or d.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"{name}: activation {act!r} is not supported ({sorted(_ACTIVATIONS)})")
    gemma = family.startswith("gemma")
    try:
        D, H, L = int(d["hidden_size"]), int(d["num_attention_heads"]), int(d["num_hidden_layers"])
        Dh = int(d.get("head_dim") or D // H)
        bias = bool(d.get("attention_bias", False))
        windows = windows_from_hf(d, L)
        local = family == "gemma3_text" and bool(windows)
        return ModelConfig(
            name=name, family=family, n_layers=L, n_heads=H, n_kv_heads=int(d.get("num_key_value_heads") or H),
            d_model=D, d_head=Dh, d_mlp=int(d["intermediate_size"]), vocab_size=int(d["vocab_size"]),
            n_ctx=int(d.get("max_position_embeddings", 2048)), norm="rmsnorm",
            norm_eps=float(d.get("rms_norm_eps", 1e-6)), positional="rope", rope_inv_freq=rope_from_hf(d, Dh),
            activation=_ACTIVATIONS[act], gated_mlp=True, qkv_bias=True if family == "qwen2" else bias,
            o_bias=False if family == "qwen2" else bias, mlp_bias=bool(d.get("mlp_bias", False)),
            tied_embeddings=bool(d.get("tie_word_embeddings", gemma)),
            qk_norm={"qwen3": "head", "gemma3_text": "head", "olmo2": "all"}.get(family, ""),
            pre_norms=family != "olmo2",
            windows=windows, rope_local_inv_freq=rope_from_hf(d, Dh, "sliding_attention") if local else None,
            post_norms=gemma or family == "olmo2", attn_scale=float(d["query_pre_attn_scalar"]) ** -0.5 if gemma else None,
            attn_softcap=float(d.get("attn_logit_softcapping") or 0.0),
            logit_softcap=float(d.get("final_logit_softcapping") or 0.0), embed_scale=D**0.5 if gemma else 1.0,
        )  # fmt: skip
    except KeyError as err:
        raise CheckpointError(f"{name}: config.json lacks {err}") from None
    except NotImplementedError as err:
        raise CheckpointError(f"{name}: {err}") from None


def params_from_hf(t: Tensors, cfg: ModelConfig) -> dict[str, Any]:
    L, H, K, D, Dh, F, V = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.vocab_size
    a, m = "model.layers.{i}.self_attn.", "model.layers.{i}.mlp."

    def heads_in(w, n):  # [L, n*Dh, D] → [L, n, D, Dh]
        return w.reshape(L, n, Dh, D).transpose(0, 1, 3, 2)

    if cfg.family == "phi3":  # fused: rows q (H·Dh), k (K·Dh), v (K·Dh); gate (F), up (F)
        w_q, w_k, w_v = np.split(t.stack(a + "qkv_proj.weight", L, ((H + 2 * K) * Dh, D)), [H * Dh, (H + K) * Dh], 1)
        w_gate, w_up = np.split(t.stack(m + "gate_up_proj.weight", L, (2 * F, D)), 2, 1)
    else:
        w_q, w_k, w_v = (t.stack(a + f"{x}_proj.weight", L, (n * Dh, D)) for x, n in (("q", H), ("k", K), ("v", K)))
        w_gate, w_up = t.stack(m + "gate_proj.weight", L, (F, D)), t.stack(m + "up_proj.weight", L, (F, D))

    def norm(name, width=D):  # Gemma's RMSNorm weights w act as 1 + w
        scale = t.stack("model.layers.{i}." + name + ".weight", L, (width,))
        return {"scale": scale + 1 if cfg.family.startswith("gemma") else scale}

    blocks = {
        "w_q": heads_in(w_q, H),
        "w_k": heads_in(w_k, K),
        "w_v": heads_in(w_v, K),
        "w_o": t.stack(a + "o_proj.weight", L, (D, H * Dh)).transpose(0, 2, 1).reshape(L, H, Dh, D),
        "w_in": w_up.transpose(0, 2, 1),
        "w_gate": w_gate.transpose(0, 2, 1),
        "w_out": t.stack(m + "down_proj.weight", L, (D, F)).transpose(0, 2, 1),
    }
    if cfg.pre_norms:  # with post-norms (Gemma), post_attention_layernorm follows attention
        blocks["ln1"] = norm("input_layernorm")
        blocks["ln2"] = norm("pre_feedforward_layernorm" if cfg.post_norms else "post_attention_layernorm")
    if cfg.post_norms:
        blocks["ln1_post"], blocks["ln2_post"] = norm("post_attention_layernorm"), norm("post_feedforward_layernorm")
    if cfg.qk_norm:
        wide = cfg.qk_norm == "all"
        blocks["q_norm"] = norm("self_attn.q_norm", H * Dh if wide else Dh)["scale"]
        blocks["k_norm"] = norm("self_attn.k_norm", K * Dh if wide else Dh)["scale"]
    if cfg.qkv_bias:
        blocks["b_q"] = t.stack(a + "q_proj.bias", L, (H * Dh,)).reshape(L, H, Dh)
        blocks["b_k"] = t.stack(a + "k_proj.bias", L, (K * Dh,)).reshape(L, K, Dh)
        blocks["b_v"] = t.stack(a + "v_proj.bias", L, (K * Dh,)).reshape(L, K, Dh)
    if cfg.o_bias:
        blocks["b_o"] = t.stack(a + "o_proj.bias", L, (D,))
    if cfg.mlp_bias:
        blocks["b_in"] = t.stack(m + "up_proj.bias", L, (F,))
        blocks["b_gate"] = t.stack(m + "gate_proj.bias", L, (F,))
        blocks["b_out"] = t.stack(m + "down_proj.bias", L, (D,))
    params = {
        "tok_embed": t.get("model.embed_tokens.weight", (V, D)),
        "blocks": blocks,
        "ln_f": {"scale": t.get("model.norm.weight", (D,)) + (1 if cfg.family.startswith("gemma") else 0)},
    }
    if not cfg.tied_embeddings:
        params["unembed"] = np.ascontiguousarray(t.get("lm_head.weight", (V, D)).T)
    else:
        check_tied_head(t, params["tok_embed"])
    return params


# llama.cpp's Gemma conventions (not in the file): every `pattern`-th layer attends globally, the
# others through the sliding window with RoPE base 10000; queries scale by 1/√key_length, except
# in the 27B models (`layers` blocks), which scale by 1/√(D/H).
_GGUF_GEMMA = {"gemma2": dict(pattern=2, layers=46), "gemma3": dict(pattern=6, layers=62)}


def config_from_gguf(f: GGUFFile, name: str) -> ModelConfig:
    """The config of a GGUF file: its metadata read as HF config keys (``config_from_hf``), with
    biases and tying read off the tensors present and llama.cpp's ``rope_freqs`` factors applied."""
    arch, t = f.architecture, f.tensors
    get = lambda key, default=...: f.meta(f"{arch}.{key}", default)
    D, H, L = int(get("embedding_length")), int(get("attention.head_count")), int(get("block_count"))
    head_dim = int(get("attention.key_length", D // H))
    scaling = get("rope.scaling.type", None)
    rope = {"rope_type": scaling, "factor": get("rope.scaling.factor")} if scaling not in (None, "none") else {}
    gemma = {}
    if arch in _GGUF_GEMMA:
        rule = _GGUF_GEMMA[arch]
        gemma = {
            "model_type": "gemma3_text" if arch == "gemma3" else arch, "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": D // H if rule["layers"] == L else head_dim,
            "layer_types": ["full_attention" if (i + 1) % rule["pattern"] == 0 else "sliding_attention" for i in range(L)],
            "attn_logit_softcapping": get("attn_logit_softcapping", None),
            "final_logit_softcapping": get("final_logit_softcapping", None),
            "rope_parameters": {
                "full_attention": {"rope_type": "default", **rope, "rope_theta": get("rope.freq_base", 10000.0)},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            "tie_word_embeddings": "output.weight" not in t,
        }  # fmt: skip
    d = {
        "model_type": arch, "hidden_size": D, "num_attention_heads": H, "num_hidden_layers": L,
        "num_key_value_heads": get("attention.head_count_kv", H), "head_dim": head_dim,
        "intermediate_size": get("feed_forward_length"), "vocab_size": t["token_embd.weight"].shape[-1],
        "max_position_embeddings": get("context_length", 2048), "rope_theta": get("rope.freq_base", 10000.0),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6), "rope_scaling": rope,
        "partial_rotary_factor": get("rope.dimension_count", head_dim) / head_dim,
        "sliding_window": get("attention.sliding_window", None), **gemma,
    }  # fmt: skip
    cfg = config_from_hf(d, name)
    if gemma:
        return cfg
    factors = f.dequantize("rope_freqs.weight") if "rope_freqs.weight" in t else None
    try:
        inv_freq = rope_inv_freq(2 * len(cfg.rope_inv_freq), float(d["rope_theta"]), rope, factors)
    except NotImplementedError as err:
        raise CheckpointError(f"{name}: {err}") from None
    return dataclasses.replace(
        cfg, rope_inv_freq=inv_freq, qkv_bias="blk.0.attn_q.bias" in t, o_bias="blk.0.attn_output.bias" in t,
        mlp_bias="blk.0.ffn_up.bias" in t, tied_embeddings="output.weight" not in t,
    )  # fmt: skip


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of q/k projections (interleaved → rotate-half pairs)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name_map(cfg: ModelConfig) -> GGUFNameMap:
    permuted = cfg.family == "llama"
    q_fix = functools.partial(_unpermute, n_heads=cfg.n_heads) if permuted else identity
    k_fix = functools.partial(_unpermute, n_heads=cfg.n_kv_heads) if permuted else identity
    # llama.cpp stores Gemma's norm weights as 1 + w; params_from_hf adds the 1 itself
    norm = (lambda w: w - 1) if cfg.family.startswith("gemma") else identity
    m = {
        "model.embed_tokens.weight": ("token_embd.weight", identity),
        "model.norm.weight": ("output_norm.weight", norm),
        "lm_head.weight": ("output.weight", identity),
    }
    sublayer_norms = (
        (("post_attention_layernorm", "post_attention_norm", norm), ("pre_feedforward_layernorm", "ffn_norm", norm),
         ("post_feedforward_layernorm", "post_ffw_norm", norm))
        if cfg.post_norms
        else (("post_attention_layernorm", "ffn_norm", identity),)
    )  # fmt: skip
    names = sublayer_norms + (
        ("input_layernorm", "attn_norm", norm),
        ("self_attn.q_proj", "attn_q", q_fix), ("self_attn.k_proj", "attn_k", k_fix),
        ("self_attn.v_proj", "attn_v", identity), ("self_attn.o_proj", "attn_output", identity),
        ("mlp.gate_proj", "ffn_gate", identity), ("mlp.up_proj", "ffn_up", identity),
        ("mlp.down_proj", "ffn_down", identity), ("self_attn.q_norm", "attn_q_norm", norm),
        ("self_attn.k_norm", "attn_k_norm", norm), ("self_attn.qkv_proj", "attn_qkv", identity),
        ("mlp.gate_up_proj", "ffn_up", identity),  # Phi-3: fused as stored (rows gate, then up)
    )  # fmt: skip
    for i in range(cfg.n_layers):
        for hf, gg, fix in names:
            for kind in ("weight", "bias"):
                m[f"model.layers.{i}.{hf}.{kind}"] = (f"blk.{i}.{gg}.{kind}", fix)
    return m
