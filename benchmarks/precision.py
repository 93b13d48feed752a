"""Reduced precision: per-input scores of every estimator with the model in bfloat16 against the same
model in float32, on the same prompts.

    python -m benchmarks.precision [--model smollm2-135m] [--inputs 8] [--out benchmarks/results]

Per estimator: the median over inputs of Spearman's rank correlation between the bfloat16 and float32
scores of one input (over every scored edge), the Jaccard of the top-100 circuits of the mean scores,
and the largest error relative to the input's scale (max |s_bf16 − s_f32| over edges / max |s_f32|).
Exact patching scores a fixed subset of edges (every ``--exact-every``-th) and EAP-IG-activations
runs on the first ``--activation-inputs`` prompts (both cost many forwards per input). Scores are
float32 in both runs (gradient products and metrics accumulate in float32; the model's weights and
activations are bfloat16).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from benchmarks.common import environment, save

JOBS = (("exact", None), ("eap", None), ("eap-ig-inputs", 5), ("eap-ig-activations", 5),
        ("clean-corrupted", None), ("ceap", 5))  # fmt: skip


def compare(a: np.ndarray, b: np.ndarray, n_top: int = 100) -> dict:
    """bfloat16 scores ``b`` against float32 ``a`` ([N, E], the same edges)."""
    rho = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    rel = np.abs(b - a).max(1) / np.maximum(np.abs(a).max(1), 1e-30)
    top = lambda s: set(np.argsort(-np.abs(s.mean(0)))[: min(n_top, s.shape[1])])
    ta, tb = top(a), top(b)
    return {
        "spearman_median": float(np.median(rho)),
        "spearman_min": float(np.min(rho)),
        f"top{n_top}_jaccard": len(ta & tb) / len(ta | tb),
        "max_relative_error": float(rel.max()),
        "median_relative_error": float(np.median(rel)),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--activation-inputs", type=int, default=2)
    ap.add_argument("--exact-every", type=int, default=100)
    ap.add_argument("--jobs", default=",".join(m for m, _ in JOBS))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    import mivar_jax as mv

    models = {dtype: mv.load_model(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    data = mv.tasks.make("ioi", models["float32"], n=args.inputs, seed=0)
    E = models["float32"].graph.n_edges
    subset = np.arange(0, E, args.exact_every)
    out = {"model": args.model, "inputs": len(data), "positions": data.n_positions, "jobs": {}}
    for method, steps in JOBS:
        if method not in args.jobs.split(","):
            continue
        d = data[: args.activation_inputs] if method == "eap-ig-activations" else data
        runs, seconds = {}, {}
        for dtype, model in models.items():
            t0 = time.perf_counter()
            s = mv.attribute(model, d, method, steps=steps or 1, subset=subset if method == "exact" else None,
                             progress=False)  # fmt: skip
            seconds[dtype] = time.perf_counter() - t0
            runs[dtype] = s.per_input[:, subset] if method == "exact" else s.per_input
        row = compare(runs["float32"], runs["bfloat16"])
        row.update(inputs=len(d), edges=runs["float32"].shape[1], seconds=seconds)
        out["jobs"][method if steps is None else f"{method}-m{steps}"] = row
        print(f"{method:20s} inputs {len(d):2d} edges {row['edges']:6d}: Spearman median {row['spearman_median']:.4f} "
              f"(min {row['spearman_min']:.4f}), top-100 Jaccard {row['top100_jaccard']:.3f}, max rel. error "
              f"{row['max_relative_error']:.3g} (median {row['median_relative_error']:.3g})", flush=True)  # fmt: skip
    out["environment"] = environment()
    print(f"saved {save(out, args.out, 'precision')}")
    return out


if __name__ == "__main__":
    main()
