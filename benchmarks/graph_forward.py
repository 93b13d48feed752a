"""Graph-form forward vs the plain forward on a GPT-2-small-shaped model (random weights).

    python -m benchmarks.graph_forward [--batch 8] [--tokens 20] [--out benchmarks/results]

Target (issue 2): the graph-form forward costs at most 2x the plain forward, batch 8 x 20 tokens.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import compiled_memory, environment, gpt2_small_config, peak_rss_mb, save, time_cases
from mivar_jax.models import EdgeMix, init_params, transformer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    cfg = gpt2_small_config()
    g = cfg.graph
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (args.batch, args.tokens)), jnp.int32)
    mask = jnp.ones_like(tokens)
    last = jnp.full((args.batch,), args.tokens - 1, jnp.int32)

    plain = jax.jit(transformer.forward, static_argnums=0)
    graph = jax.jit(functools.partial(transformer.forward, nodes=True), static_argnums=0)
    corrupted = graph(cfg, params, tokens, mask)[1]
    edge_mask = jnp.asarray((rng.random(g.n_edges) < 0.5).astype(np.float32))
    mix = EdgeMix(edge_mask, corrupted)

    cases = {
        "plain_forward": (plain, (cfg, params, tokens, mask), {}),
        "graph_forward_residual": (graph, (cfg, params, tokens, mask), {}),
        "graph_forward_masked": (graph, (cfg, params, tokens, mask, mix), {}),
        "plain_forward_last_position": (plain, (cfg, params, tokens, mask), {"logit_positions": last}),
        "graph_forward_masked_last_position": (graph, (cfg, params, tokens, mask, mix), {"logit_positions": last}),
    }
    results = {"config": {"model": cfg.name, "batch": args.batch, "tokens": args.tokens, "edges": g.n_edges}}
    results.update(time_cases(cases, rounds=args.reps))
    for name, (fn, a, kw) in cases.items():
        results[name]["memory"] = compiled_memory(fn, *a, **kw)
    baseline = {name: "plain_forward_last_position" if "last" in name else "plain_forward" for name in cases}
    for name in cases:
        for stat in ("median_s", "min_s"):
            results[name][f"ratio_{stat[:-2]}"] = results[name][stat] / results[baseline[name]][stat]
    results["environment"] = environment()

    print(
        f"GPT-2-small shape, batch {args.batch} x {args.tokens} tokens, {jax.default_backend()}; ratios to the plain forward"
    )
    print(
        f"{'case':38s} {'median ms':>10s} {'min ms':>8s} {'compile s':>10s} {'temp MB':>9s} {'ratio med':>9s} {'ratio min':>9s}"
    )
    for name in cases:
        r = results[name]
        temp = (r["memory"] or {}).get("temp_bytes", 0) / 2**20
        print(
            f"{name:38s} {1e3 * r['median_s']:10.1f} {1e3 * r['min_s']:8.1f} {r['compile_s']:10.2f} {temp:9.1f} "
            f"{r['ratio_median']:9.2f} {r['ratio_min']:9.2f}"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB; saved {save(results, args.out, 'graph_forward')}")


if __name__ == "__main__":
    main()
