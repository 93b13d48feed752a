"""ModelConfig: the static (hashable) description of a decoder-only transformer."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from mivar_jax.graph import Graph

ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder (GPT-2, GPT-NeoX/Pythia, the Llama family, Mistral, Qwen 2/3,
    Phi-3, Gemma 2/3, OLMo 2).

    Hashable, so it is a static argument of the jit-compiled forward functions.
    ``rope_inv_freq`` holds the rotary inverse frequencies [R / 2] after any scaling (Llama-3,
    linear, or GGUF ``rope_freqs`` factors): the first R ≤ d_head dimensions of each head rotate
    (partial rotary when R < d_head), so every RoPE variant runs one code path.
    ``parallel_attn_mlp``: the MLP reads the layer's input, as its attention does (GPT-NeoX), not
    the stream after attention. ``qk_norm``: RMSNorm of the queries and keys before RoPE, ``"head"``
    over each head's width (weights ``q_norm`` / ``k_norm`` [Dh]; Qwen 3, Gemma 3) or ``"all"``
    over all heads' projections together (weights [H·Dh] / [K·Dh]; OLMo 2), "" none.
    ``pre_norms``: each sublayer normalises its input (False: OLMo 2, whose norms follow them). ``windows``: per layer, the sliding-window
    span of its attention (a query at index i sees keys at indices (i − span, i]; 0 = no window),
    or empty when no layer has one. ``rope_local_inv_freq``: the frequencies of the windowed layers
    when they differ (Gemma 3's local layers). ``post_norms``: RMSNorm of each sublayer's write
    (weights ``ln1_post`` / ``ln2_post``; Gemma 2/3) — the attention write RMSNorm(Σ_h z_h) is
    Σ_h r ⊙ z_h with r = scale / rms(Σ_h z_h), so a head's node output is its share r ⊙ z_h.
    ``attn_scale``: the attention logits' factor (None: 1/√d_head). ``attn_softcap`` /
    ``logit_softcap``: c · tanh(s / c) of the attention logits / the output logits (0: none).
    ``embed_scale``: the token embeddings' factor (Gemma: √d_model).
    """

    name: str
    family: str  # the checkpoint's model_type: "gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "phi3",
    # "gemma2", "gemma3_text", "olmo2"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    positional: str = "learned"  # "learned" | "rope"
    rope_inv_freq: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)
    activation: str = "gelu_tanh"
    gated_mlp: bool = False  # SwiGLU: down(act(gate(x)) * up(x))
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tied_embeddings: bool = True
    parallel_attn_mlp: bool = False
    qk_norm: str = ""
    pre_norms: bool = True
    windows: tuple[int, ...] = ()
    rope_local_inv_freq: tuple[float, ...] | None = dataclasses.field(default=None, repr=False)
    post_norms: bool = False
    attn_scale: float | None = None
    attn_softcap: float = 0.0
    logit_softcap: float = 0.0
    embed_scale: float = 1.0

    def __post_init__(self):
        problems = []
        for field in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "vocab_size", "n_ctx"):
            if int(getattr(self, field)) < 1:
                problems.append(f"{field} must be ≥ 1 (got {getattr(self, field)})")
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.norm not in ("layernorm", "rmsnorm"):
            problems.append(f"norm must be 'layernorm' or 'rmsnorm' (got {self.norm!r})")
        if self.positional not in ("learned", "rope"):
            problems.append(f"positional must be 'learned' or 'rope' (got {self.positional!r})")
        if self.positional == "rope" and not (self.rope_inv_freq and len(self.rope_inv_freq) <= self.d_head // 2):
            problems.append(f"a RoPE model needs rope_inv_freq of length 1 … d_head/2 = {self.d_head // 2}")
        if self.windows and (len(self.windows) != self.n_layers or min(self.windows) < 0):
            problems.append(f"windows needs one span ≥ 0 per layer ({self.n_layers}), got {self.windows}")
        if self.rope_local_inv_freq is not None and len(self.rope_local_inv_freq) != len(self.rope_inv_freq or ()):
            problems.append("rope_local_inv_freq must have as many frequencies as rope_inv_freq")
        if self.qk_norm not in ("", "head", "all"):
            problems.append(f"qk_norm must be '', 'head' or 'all' (got {self.qk_norm!r})")
        if self.qk_norm == "all" and self.qkv_bias:
            problems.append("qk_norm='all' is supported without q/k/v biases")
        if self.post_norms and (self.norm != "rmsnorm" or self.o_bias):
            problems.append("post_norms needs RMSNorm and no attention output bias (a head's share must be its own)")
        if min(self.attn_softcap, self.logit_softcap) < 0:
            problems.append("softcaps must be ≥ 0 (0: none)")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS} (got {self.activation!r})")
        if problems:
            raise ValueError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    @functools.cached_property
    def graph(self) -> Graph:
        """The edge graph (EAP-IG conventions) of this architecture."""
        return Graph(self.n_layers, self.n_heads, self.parallel_attn_mlp, self.d_model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def rope_inv_freq(
    d_head: int, theta: float, scaling: dict[str, Any] | None = None, freq_factors: Any = None
) -> tuple[float, ...]:
    """Rotary inverse frequencies θ^(-2i/d), then the scaling of HF's ``rope_parameters``.

    Supported ``rope_type``: ``default``, ``linear`` (divide by ``factor``) and ``llama3``
    (Llama 3.1's wavelength-dependent interpolation). ``freq_factors`` (GGUF ``rope_freqs``)
    divide the frequencies elementwise, as llama.cpp does.
    """
    inv = [1.0 / (theta ** (i / d_head)) for i in range(0, d_head, 2)]
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
    if rope_type == "default":
        pass
    elif rope_type == "linear":
        inv = [f / float(scaling["factor"]) for f in inv]
    elif rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = (float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"]))
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / factor)
            else:
                smooth = (old_len / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = out
    else:
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported (supported: default, linear, llama3)")
    if freq_factors is not None:
        factors = [float(x) for x in freq_factors]
        if len(factors) != len(inv):
            raise ValueError(f"rope_freqs has {len(factors)} factors, expected {len(inv)}")
        inv = [f / s for f, s in zip(inv, factors, strict=True)]
    return tuple(inv)
