"""An independent, loop-based numpy implementation of the graph-form forward (test oracle).

Written from the definitions, sharing no code with mivar_jax: node and slot orders, the edge
rule, the norms, RoPE, attention and MLPs are all spelled out again here, one head and one
destination slot at a time. Slow, but small models make that fine.
"""

from __future__ import annotations

import math

import numpy as np


def _norm(cfg, scale, bias, x):
    x = x.astype(np.float64)
    if cfg.norm == "layernorm":
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.norm_eps) * scale + bias
    return _rms(x, scale, cfg.norm_eps)


def _cap(x, cap):
    return cap * np.tanh(x / cap) if cap else x


def _rms(x, scale, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale


def _act(cfg, x):
    if cfg.activation == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if cfg.activation == "gelu":
        from scipy.special import erf

        return 0.5 * x * (1 + erf(x / math.sqrt(2)))
    if cfg.activation == "relu":
        return np.maximum(x, 0)
    return x / (1 + np.exp(-x))


def _rope(cfg, x, pos, layer):
    """x [P, E] for one head; rotate-half pairs (i, i + R/2) over the first R = 2·len(inv_freq) dims
    (a windowed layer's own frequencies where the config has them)."""
    local = cfg.rope_local_inv_freq is not None and cfg.windows[layer] > 0
    inv = np.asarray(cfg.rope_local_inv_freq if local else cfg.rope_inv_freq, np.float64)
    half = len(inv)
    out = x.copy()
    for p in range(x.shape[0]):
        ang = pos[p] * inv
        c, s = np.cos(ang), np.sin(ang)
        out[p, :half] = x[p, :half] * c - x[p, half : 2 * half] * s
        out[p, half : 2 * half] = x[p, half : 2 * half] * c + x[p, :half] * s
    return out


def names(cfg):
    """Source nodes and destination slots, in EAP-IG order (re-derived here)."""
    L, H = cfg.n_layers, cfg.n_heads
    src = ["input"] + [n for layer in range(L) for n in [f"a{layer}.h{h}" for h in range(H)] + [f"m{layer}"]]
    dst = [
        n for layer in range(L) for n in [f"a{layer}.h{h}<{c}>" for c in "qkv" for h in range(H)] + [f"m{layer}"]
    ] + ["logits"]
    return src, dst


def upstream(cfg, src_name, dst_name) -> bool:
    """The edge rule, from names: is ``src`` upstream of ``dst``?"""
    if dst_name == "logits" or src_name == "input":
        return True
    s_layer = int(src_name.split(".")[0][1:])
    d_layer = int(dst_name.split(".")[0].split("<")[0][1:])
    if dst_name.startswith("m") and src_name.startswith("a"):  # parallel: not the MLP's own layer
        return s_layer < d_layer if cfg.parallel_attn_mlp else s_layer <= d_layer
    return s_layer < d_layer


def graph_forward(cfg, params, tokens, mask=None, corrupted=None, edge_mask=None, input_embeds=None, at=None):
    """Returns (logits [N, P, V], nodes {name: [N, P, D]}); ``corrupted`` is {name: [N, P, D]},
    ``edge_mask`` is {(src, dst): weight} for edges whose weight is not 1; ``input_embeds``
    replaces the input node's output; ``at`` [N] returns logits at one position per input [N, V]."""
    p = {k: np.asarray(v, np.float64) if not isinstance(v, dict) else v for k, v in params.items()}
    blocks = {
        k: (
            np.asarray(v, np.float64)
            if not isinstance(v, dict)
            else {a: np.asarray(b, np.float64) for a, b in v.items()}
        )
        for k, v in params["blocks"].items()
    }
    tokens = np.asarray(tokens)
    N, P = tokens.shape
    mask = np.ones((N, P), int) if mask is None else np.asarray(mask)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    H, K, E, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    src_names, _ = names(cfg)
    edge_mask = edge_mask or {}

    nodes = {}
    x = np.asarray(params["tok_embed"], np.float64)[tokens] * np.float32(cfg.embed_scale)
    if cfg.positional == "learned":
        x = x + np.asarray(params["pos_embed"], np.float64)[pos]
    nodes["input"] = x if input_embeds is None else np.asarray(input_embeds, np.float64)

    def read(dst, const):
        total = np.array(const, np.float64) * np.ones((N, P, D))
        for u in src_names:
            if u not in nodes or not upstream(cfg, u, dst):
                continue
            m = edge_mask.get((u, dst), 1.0)
            total = total + m * nodes[u]
            if m != 1.0:
                total = total + (1 - m) * corrupted[u]
        return total

    b_o = blocks.get("b_o", np.zeros((cfg.n_layers, D)))
    const = np.zeros(D)
    for layer in range(cfg.n_layers):
        b = {k: v[layer] if not isinstance(v, dict) else {a: c[layer] for a, c in v.items()} for k, v in blocks.items()}
        pre_norm = lambda key, x, b=b: _norm(cfg, b[key]["scale"], b[key].get("bias", 0.0), x) if cfg.pre_norms else x
        raw = {}
        for h in range(H):
            g = h // (H // K)
            qkv = {}
            for c, w, bias_key, idx in (
                ("q", b["w_q"][h], "b_q", h),
                ("k", b["w_k"][g], "b_k", g),
                ("v", b["w_v"][g], "b_v", g),
            ):
                inp = pre_norm("ln1", read(f"a{layer}.h{h}<{c}>", const))
                y = inp @ w + (b[bias_key][idx] if bias_key in b else 0.0)
                if cfg.qk_norm == "head" and c in "qk":
                    y = _rms(y, b[f"{c}_norm"], cfg.norm_eps)
                if cfg.qk_norm == "all" and c in "qk":  # the RMS of every head's projection of this input
                    every = np.stack([inp @ w_j for w_j in b[f"w_{c}"]])
                    y = y / np.sqrt((every**2).mean((0, -1))[..., None] + cfg.norm_eps)
                    y = y * b[f"{c}_norm"].reshape(-1, E)[idx]
                qkv[c] = y
            out = np.zeros((N, P, D))
            for n in range(N):
                q, k, v = qkv["q"][n], qkv["k"][n], qkv["v"][n]
                if cfg.positional == "rope":
                    q, k = _rope(cfg, q, pos[n], layer), _rope(cfg, k, pos[n], layer)
                scale = 1 / math.sqrt(E) if cfg.attn_scale is None else cfg.attn_scale
                scores = _cap(q @ k.T * scale, cfg.attn_softcap)
                for i in range(P):
                    span = cfg.windows[layer] if cfg.windows else 0
                    allowed = [j for j in range(P) if j <= i and mask[n, j] and (span == 0 or j > i - span)]
                    w = np.zeros(P)
                    if allowed:
                        s = scores[i, allowed]
                        e = np.exp(s - s.max())
                        w[allowed] = e / e.sum()
                    else:
                        w[:] = 1.0 / P
                    out[n, i] = (w @ v) @ b["w_o"][h]
            raw[h] = out
        # post-norms: each head's share of RMSNorm(Σ_h out_h)
        total = sum(raw.values())
        r = 1 / np.sqrt((total**2).mean(-1, keepdims=True) + cfg.norm_eps) if cfg.post_norms else 1.0
        for h in range(H):
            nodes[f"a{layer}.h{h}"] = raw[h] * r * (b["ln1_post"]["scale"] if cfg.post_norms else 1.0)
        mlp_const = const if cfg.parallel_attn_mlp else const + b_o[layer]  # the attention's bias is upstream?
        const = const + b_o[layer]
        inp = pre_norm("ln2", read(f"m{layer}", mlp_const))
        a = inp @ b["w_in"] + b.get("b_in", 0.0)
        if cfg.gated_mlp:
            a = _act(cfg, inp @ b["w_gate"] + b.get("b_gate", 0.0)) * a
        else:
            a = _act(cfg, a)
        nodes[f"m{layer}"] = a @ b["w_out"] + b.get("b_out", 0.0)
        if cfg.post_norms:
            nodes[f"m{layer}"] = _rms(nodes[f"m{layer}"], b["ln2_post"]["scale"], cfg.norm_eps)

    final = _norm(cfg, p["ln_f"]["scale"], p["ln_f"].get("bias", 0.0), read("logits", const))
    if at is not None:
        final = final[np.arange(N), np.asarray(at)]
    w_u = (
        np.asarray(params["tok_embed"], np.float64).T
        if cfg.tied_embeddings
        else np.asarray(params["unembed"], np.float64)
    )
    return _cap(final @ w_u, cfg.logit_softcap), nodes
