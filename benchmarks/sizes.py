"""Sizes of large models under the engine's memory model, without loading them: edges, weights,
per-input scores, and how many inputs per device each job fits in a memory budget.

    python -m benchmarks.sizes [--positions 20] [--out benchmarks/results]
    python -m benchmarks.sizes --check llama-3.2-1b --inputs 4   # a real run against the model

``--check`` builds the named model with random float32 weights and runs EAP on one IOI prompt, then on
``--inputs`` prompts in one batch (GPT-2's tokenizer, from the test extra): the process's peak memory
growth per added input against the memory model's ``bytes_per_input``, and the growth with one
input (the fixed part) apart.

The configs are the published shapes (config.json of each checkpoint), read through the same
``config_from_hf`` as real loading; the byte counts are the engine's own (each gradient estimator's
``bytes_per_input`` in the registry, ``bytes_per_patch`` / ``bytes_per_input_state`` of exact patching). Weights
are counted at 2 bytes (bfloat16) and 4 (float32). A budget is what the job may use besides the
weights.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.common import peak_rss_mb, save
from mivar_jax.estimators.exact import bytes_per_input_state, bytes_per_patch
from mivar_jax.estimators.registry import get
from mivar_jax.models import gpt2, llama, neox

GiB = 2**30
LLAMA_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
CONFIGS = {  # published config.json values (the keys the loaders read)
    "gpt2-small": (gpt2, dict(n_embd=768, n_head=12, n_layer=12, vocab_size=50257, n_positions=1024)),
    "pythia-160m": (neox, dict(
        model_type="gpt_neox", hidden_size=768, num_attention_heads=12, num_hidden_layers=12,
        intermediate_size=3072, vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True,
    )),
    "llama-3.2-1b": (llama, dict(
        model_type="llama", hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=16,
        intermediate_size=8192, vocab_size=128256, head_dim=64, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={**LLAMA_ROPE, "original_max_position_embeddings": 8192},
    )),
    "qwen2.5-0.5b": (llama, dict(
        model_type="qwen2", hidden_size=896, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24,
        intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
    )),
    "gemma-2-2b": (llama, dict(
        model_type="gemma2", hidden_size=2304, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=26,
        intermediate_size=9216, vocab_size=256000, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
        hidden_activation="gelu_pytorch_tanh", attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    )),
    "llama-3.1-8b": (llama, dict(
        model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32,
        intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
        rope_scaling={**LLAMA_ROPE, "factor": 8.0, "original_max_position_embeddings": 8192},
    )),
}  # fmt: skip


def n_weights(cfg) -> int:
    D, F, L = cfg.d_model, cfg.d_mlp, cfg.n_layers
    attn = D * cfg.d_head * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp = D * F * (3 if cfg.gated_mlp else 2)
    return L * (attn + mlp) + cfg.vocab_size * D * (1 if cfg.tied_embeddings else 2)


def rows(positions: int, budgets: dict[str, int]) -> list[dict]:
    out = []
    for name, (family, d) in CONFIGS.items():
        cfg = family.config_from_hf(d, name)
        weights = n_weights(cfg)
        row = {
            "model": name,
            "edges": cfg.graph.n_edges,
            "weights_GiB_bf16": round(2 * weights / GiB, 2),
            "weights_GiB_f32": round(4 * weights / GiB, 2),
            "scores_MiB_per_input": round(4 * cfg.graph.n_edges / 2**20, 2),
        }
        for budget_name, budget in budgets.items():
            for job, per in (
                ("eap", get("eap").bytes_per_input(cfg, positions)),
                ("eap-ig-activations", get("eap-ig-activations").bytes_per_input(cfg, positions)),
                ("exact", bytes_per_input_state(cfg, positions) + bytes_per_patch(cfg, positions, positions)),
            ):
                row[f"{job}_inputs_{budget_name}"] = max(0, (budget - 4 * weights) // per)
        out.append(row)
    return out


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def check(name: str, n_inputs: int) -> dict:
    """Memory of EAP on a random ``name``: the process's peak growth with one IOI prompt per batch,
    then with ``n_inputs``; their difference per added input against the memory model's
    ``bytes_per_input`` (what sizes the batches), and the fixed part (compiled code, the clean run,
    on CPU XLA's transposed copies of the unembedding) apart."""
    import jax
    import numpy as np

    import mivar_jax as mv
    from tests.factory import gpt2_tokenizer

    family, d = CONFIGS[name]
    cfg = family.config_from_hf(d, name)
    params = jax.block_until_ready(mv.models.init_params(cfg, jax.random.key(0)))
    model = mv.Model(cfg, params, gpt2_tokenizer())
    data = mv.tasks.make("ioi", model, n=n_inputs, seed=0)
    before = current_rss_mb()  # the peak below may include the weights' initialisation: a conservative growth
    growth = {}
    for n in (1, n_inputs):
        scores = mv.attribute(model, data[:n], "eap", batch_size=n, progress=False)
        assert np.isfinite(scores.per_input).all()
        growth[n] = peak_rss_mb() - before
    per_input = (growth[n_inputs] - growth[1]) / (n_inputs - 1)
    predicted = get("eap").bytes_per_input(cfg, data.n_positions) / 2**20
    return {
        "model": name, "inputs": n_inputs, "positions": data.n_positions, "weights_MiB": 4 * n_weights(cfg) / 2**20,
        "growth_one_input_MiB": round(growth[1], 1), "growth_per_added_input_MiB": round(per_input, 1),
        "predicted_per_input_MiB": round(predicted, 1), "within": per_input <= predicted,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=20, help="prompt length (IOI is about 16-20 tokens)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--check", choices=sorted(CONFIGS), help="run EAP on a random model of this shape")
    ap.add_argument("--inputs", type=int, default=4, help="inputs in the --check's second batch (≥ 2)")
    args = ap.parse_args()
    if args.check:
        result = check(args.check, args.inputs)
        print(result)
        save({"check": result}, args.out, f"sizes-check-{args.check}-{args.inputs}")
        return
    table = rows(args.positions, {"24GiB": 24 * GiB, "80GB": 80 * 10**9})
    for row in table:
        print(row)
    save({"positions": args.positions, "rows": table}, args.out, "sizes")


if __name__ == "__main__":
    main()
