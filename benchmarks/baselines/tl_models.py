"""TransformerLens ``HookedTransformer`` models with the same weights as an engine model, and the
hook names of the EAP-IG graph's nodes and destination slots.

GPT-2 goes through TransformerLens' own weight conversion of a transformers model; Llama-family
models likewise, then grouped-query attention is ungrouped (each query head gets its own copy of its
K/V weights, so each head has its own k and v input slot, as in the engine's graph). The hooks used:
split q/k/v inputs per head, per-head results (W_O applied, no b_O), the MLP input hook.
"""

from __future__ import annotations

import warnings

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

SPLIT_HOOKS = dict(use_split_qkv_input=True, use_attn_result=True, use_hook_mlp_in=True)
_KEEP_WEIGHTS = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


def _hooked(cfg: HookedTransformerConfig) -> HookedTransformer:
    with warnings.catch_warnings():  # 3.x deprecates HookedTransformer in favour of 4.x's bridge
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg)


def from_hf_gpt2(hf_model) -> HookedTransformer:
    """A HookedTransformer holding a transformers GPT2LMHeadModel's weights (no folding)."""
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    c = hf_model.config
    act = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "gelu_pytorch_tanh": "gelu_new"}[
        c.activation_function
    ]
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=act,
        normalization_type="LN", eps=c.layer_norm_epsilon, default_prepend_bos=False, device="cpu",
        dtype=torch.float32, **SPLIT_HOOKS,
    )  # fmt: skip
    model = _hooked(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf_model, cfg), **_KEEP_WEIGHTS)
    return model.eval()


def from_hf_llama(hf_model) -> HookedTransformer:
    """A HookedTransformer holding a transformers LlamaForCausalLM's weights, GQA ungrouped."""
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = hf_model.config
    H, K = c.num_attention_heads, c.num_key_value_heads
    common = dict(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=H, d_head=c.hidden_size // H,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=min(c.max_position_embeddings, 2048),
        act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps, positional_embedding_type="rotary",
        rotary_dim=c.hidden_size // H, rotary_base=float(c.rope_parameters["rope_theta"]), rotary_adjacent_pairs=False,
        gated_mlp=True, final_rms=True, default_prepend_bos=False, device="cpu", dtype=torch.float32,
    )  # fmt: skip
    grouped = HookedTransformerConfig(n_key_value_heads=K, **common)
    state = convert_llama_weights(hf_model, grouped)
    for key in list(state):  # ungroup: each query head reads its own copy of its group's K/V
        if key.endswith(("attn._W_K", "attn._W_V", "attn._b_K", "attn._b_V")):
            state[key.replace("._", ".")] = state.pop(key).repeat_interleave(H // K, dim=0)
    model = _hooked(HookedTransformerConfig(**common, **SPLIT_HOOKS))
    model.load_and_process_state_dict(state, **_KEEP_WEIGHTS)
    return model.eval()


def node_hooks(graph) -> list[tuple[str, int | None]]:
    """(hook name, head index or None) of each source node's output, in the Graph's order."""
    out: list[tuple[str, int | None]] = [("blocks.0.hook_resid_pre", None)]
    for layer in range(graph.n_layers):
        out += [(f"blocks.{layer}.attn.hook_result", h) for h in range(graph.n_heads)]
        out.append((f"blocks.{layer}.hook_mlp_out", None))
    return out


def slot_hooks(graph) -> list[tuple[str, int | None]]:
    """(hook name, head index or None) of each destination slot's input, in the Graph's order."""
    out: list[tuple[str, int | None]] = []
    for name in graph.dst_names:
        if name == "logits":
            out.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", None))
        elif "<" in name:  # a{l}.h{h}<q>
            layer, head = name[1:].split(".h")
            head, kind = head.split("<")
            out.append((f"blocks.{int(layer)}.hook_{kind[0]}_input", int(head)))
        else:  # m{l}
            out.append((f"blocks.{int(name[1:])}.hook_mlp_in", None))
    return out
