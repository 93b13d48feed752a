"""Estimator throughput on a GPT-2-small-shaped model (random weights, GPT-2's tokenizer, IOI prompts).

    python -m benchmarks.estimators [--inputs 8] [--edge-fraction 0.03] [--naive-edges 8] [--out DIR]

Reports, in one run on one machine:
- exact patching: edge·input evaluations per second on a random subset of edges (extrapolated to
  all edges, stated as such), the same for a naive loop of full patched forwards (one per edge),
  their ratio, and the achieved FLOP/s against a large matmul measured in the same run;
- EAP-IG-inputs (m = 5): per-input scores for N inputs vs m + 1 plain forward+backward passes;
- EAP-IG-activations (m = 1): per-input scores vs the (1 + 2L) · m whole runs of the reference
  library's algorithm (slot gradients under a ``Replace``, each run from the first layer; the
  engine's runs start at their group's layers, so below 1×);
- peak memory (RSS).
Targets (issue 4): exact ≥ 10× the naive loop; EAP-IG-inputs ≤ 1.5× the m + 1 passes;
EAP-IG-activations < 1× its whole runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import mivar_jax as mv
from benchmarks.common import environment, gpt2_small_ioi, peak_rss_mb, save, time_cases
from mivar_jax.models import EdgeMix, Replace
from mivar_jax.models.transformer import forward
from mivar_jax.patching import slot_gradients, windows


def matmul_flops_per_s(n: int = 2048) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = time_cases({"mm": (f, (a,), {})}, rounds=5)["mm"]
    return 2 * n**3 / t["min_s"]


def exact_flops(cfg, data, edges: np.ndarray) -> float:
    """Floating-point operations of the exact kernels for ``edges`` on every input (window-aware)."""
    g = cfg.graph
    D, F, L, P = cfg.d_model, cfg.d_mlp, cfg.n_layers, data.n_positions
    per_layer_token = 2 * (4 * D * D + 2 * D * F) + 4 * P * D  # projections + MLP, attention over P keys
    mlp_token = 2 * (2 * D * F)
    head_token = 2 * 4 * D * cfg.d_head + 4 * P * cfg.d_head
    dst = np.asarray(g.edge_dst)[np.asarray(edges)]
    layer, kind = np.asarray(g.dst_layer)[dst], np.asarray(g.dst_kind)[dst]
    per_token = mlp_token + (L - layer - 1) * per_layer_token + np.where(kind != "mlp", head_token, 0)
    widths = windows(data, "patch")
    logits = kind == "logits"  # one unembedding dot per input, whatever the window
    return float(widths.sum() * per_token[~logits].sum() + len(widths) * logits.sum() * 2 * D * 2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--edge-fraction", type=float, default=0.03)
    ap.add_argument("--naive-edges", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--activation-steps", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved EAP-IG / plain-pass timings (medians)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    model, data = gpt2_small_ioi(args.inputs)
    cfg, g = model.config, model.graph
    rng = np.random.default_rng(0)
    # every k-th destination slot with all its edges: kernels of realistic sizes, all layers covered
    slots = np.arange(0, g.n_dst, max(1, round(1 / args.edge_fraction)))
    edges = np.nonzero(np.isin(g.edge_dst, slots))[0]
    results = {
        "config": {"model": cfg.name, "inputs": len(data), "positions": data.n_positions, "edges_total": g.n_edges}
    }
    peak_flops = matmul_flops_per_s()
    results["matmul_flops_per_s"] = peak_flops
    print(f"GPT-2-small shape, {len(data)} IOI prompts of {data.n_positions} positions; {jax.default_backend()}")
    print(f"large matmul: {peak_flops / 1e9:.1f} GFLOP/s")

    # --- exact: compile on one edge per kernel group, then time the random subset
    kinds = np.array(["mlp" if k == "mlp" else "logits" if k == "logits" else "head" for k in g.dst_kind])[g.edge_dst]
    keys = g.dst_layer[g.edge_dst] * 3 + np.searchsorted(["head", "logits", "mlp"], kinds)
    one_per_group = np.unique(keys, return_index=True)[1]  # an edge of every kernel and layer
    t0 = time.perf_counter()
    mv.attribute(model, data, method="exact", subset=one_per_group, progress=False)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mv.attribute(model, data, method="exact", subset=edges, progress=False)
    exact_s = time.perf_counter() - t0
    exact_rate = len(edges) * len(data) / exact_s
    achieved = exact_flops(cfg, data, edges) / exact_s

    # --- naive: one full patched forward (all inputs) per edge
    b = data.batch()
    embeds = mv.tasks.corrupted_embeddings(model, data)
    corrupted = jax.jit(forward, static_argnums=0, static_argnames="nodes")(
        cfg, model.params, b.corrupted, b.attention_mask, input_embeds=embeds, nodes=True
    )[1]
    naive = jax.jit(
        lambda mask: mv.tasks.logit_diff(
            forward(
                cfg, model.params, b.clean, b.attention_mask, EdgeMix(mask, corrupted), logit_positions=b.answer_pos
            ),
            b.correct,
            b.incorrect,
        )
    )
    masks = [
        jnp.ones(g.n_edges).at[int(e)].set(0.0) for e in rng.choice(g.n_edges, size=args.naive_edges, replace=False)
    ]
    jax.block_until_ready(naive(masks[0]))
    t0 = time.perf_counter()
    for m in masks:
        jax.block_until_ready(naive(m))
    naive_rate = len(masks) * len(data) / (time.perf_counter() - t0)
    results["exact"] = {
        "edges_measured": int(len(edges)),
        "seconds": exact_s,
        "compile_s": compile_s,
        "edge_inputs_per_s": exact_rate,
        "extrapolated_all_edges_s": g.n_edges * len(data) / exact_rate,
        "achieved_flops_per_s": achieved,
        "fraction_of_matmul": achieved / peak_flops,
        "naive_edge_inputs_per_s": naive_rate,
        "ratio_to_naive": exact_rate / naive_rate,
        "mean_window": float(windows(data, "patch").mean()),
    }
    print(
        f"exact: {exact_rate:.0f} edge·inputs/s on {len(edges)} edges into every {round(1 / args.edge_fraction)}th slot (all {g.n_edges} edges: "
        f"~{g.n_edges * len(data) / exact_rate:.0f} s, extrapolated); compile {compile_s:.1f} s; "
        f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak_flops:.0%} of the matmul"
    )
    print(
        f"naive loop of patched full forwards: {naive_rate:.1f} edge·inputs/s → exact is {exact_rate / naive_rate:.1f}x"
    )

    # --- EAP-IG-inputs vs m + 1 plain forward+backward passes, interleaved rounds (medians)
    def plain_metric(x):
        logits = forward(cfg, model.params, b.clean, b.attention_mask, input_embeds=x, logit_positions=b.answer_pos)
        return mv.tasks.logit_diff(logits, b.correct, b.incorrect).sum()

    fwd_bwd = jax.jit(jax.grad(plain_metric))
    t0 = time.perf_counter()
    mv.attribute(model, data, method="eap-ig-inputs", steps=args.steps, progress=False)
    ig_first = time.perf_counter() - t0
    jax.block_until_ready(fwd_bwd(embeds))
    ig_times, pass_times = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        mv.attribute(model, data, method="eap-ig-inputs", steps=args.steps, progress=False)
        ig_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(args.steps + 1):
            jax.block_until_ready(fwd_bwd(embeds))
        pass_times.append(time.perf_counter() - t0)
    ig_s, passes_s = float(np.median(ig_times)), float(np.median(pass_times))
    results["eap_ig_inputs"] = {
        "steps": args.steps,
        "seconds": ig_s,
        "first_call_s": ig_first,
        "plain_fwd_bwd_passes_s": passes_s,
        "ratio_to_passes": ig_s / passes_s,
        "rounds": {"eap_ig_s": ig_times, "plain_passes_s": pass_times},
        "inputs_per_s": len(data) / ig_s,
    }
    print(
        f"eap-ig-inputs m={args.steps}: {ig_s:.2f} s for {len(data)} inputs ({len(data) / ig_s:.2f} inputs/s; first call "
        f"{ig_first:.1f} s) vs {args.steps + 1} plain forward+backward passes {passes_s:.2f} s → {ig_s / passes_s:.2f}x"
    )

    # --- EAP-IG-activations vs the (1 + 2L)·m whole runs of the library's algorithm (a middle layer's heads fixed)
    m, runs = args.activation_steps, (1 + 2 * cfg.n_layers) * args.activation_steps
    heads = 1 + cfg.n_layers // 2 * (cfg.n_heads + 1) + np.arange(cfg.n_heads)
    fixed = Replace(corrupted, jnp.zeros(g.n_src).at[heads].set(1.0))
    embeds_clean = jax.jit(forward, static_argnums=0, static_argnames="nodes")(
        cfg, model.params, b.clean, b.attention_mask, nodes=True
    )[1][0]
    whole_run = jax.jit(
        lambda: slot_gradients(
            cfg, model.params, b.clean, b.attention_mask, lambda logits: mv.tasks.logit_diff(logits, b.correct, b.incorrect).sum(),
            input_embeds=embeds_clean, logit_positions=b.answer_pos, replace=fixed, with_nodes=False,
        )[0]
    )  # fmt: skip
    jax.block_until_ready(whole_run())
    activations = lambda: mv.attribute(model, data, method="eap-ig-activations", steps=m, progress=False)
    t0 = time.perf_counter()
    activations()
    act_first = time.perf_counter() - t0
    act_times, whole_times = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        activations()
        act_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(runs):
            jax.block_until_ready(whole_run())
        whole_times.append(time.perf_counter() - t0)
    act_s, whole_s = float(np.median(act_times)), float(np.median(whole_times))
    results["eap_ig_activations"] = {
        "steps": m,
        "seconds": act_s,
        "first_call_s": act_first,
        "whole_runs": runs,
        "whole_runs_s": whole_s,
        "ratio_to_whole_runs": act_s / whole_s,
        "rounds": {"eap_ig_activations_s": act_times, "whole_runs_s": whole_times},
    }
    print(
        f"eap-ig-activations m={m}: {act_s:.2f} s for {len(data)} inputs (first call {act_first:.1f} s) vs {runs} "
        f"whole runs (slot gradients, one group fixed) {whole_s:.2f} s → {act_s / whole_s:.2f}x"
    )
    results["peak_rss_mb"] = peak_rss_mb()
    results["environment"] = environment()
    print(f"peak RSS {peak_rss_mb():.0f} MB; saved {save(results, args.out, 'estimators')}")


if __name__ == "__main__":
    main()
