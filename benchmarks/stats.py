"""Bootstrap throughput at the issue's scale: B replicates of N per-input scores over gpt2-small's
32,491 edges, from the scores to the pruned top-n replicate circuits and the full B × B
Jaccard matrices (plus every interval), compiled once for all B.

    python -m benchmarks.stats [--replicates 1000] [--inputs 1000] [--n-edges 100] [--out DIR]
                               [--scores-memory-mib M]

Target (issue 6): ≤ 5 s after compilation on this 2-core CPU; memory reported (RSS).
``--scores-memory-mib M``: the scores written to disk first (``ScoreShards``, as ``attribute`` does
for scores over M MiB) and bootstrapped from there, in column blocks of M / 8 MiB.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

import mivar_jax as mv
from benchmarks.common import environment, peak_rss_mb, save
from mivar_jax._shards import ShardWriter


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=1000)
    ap.add_argument("--n-edges", type=int, default=100)
    ap.add_argument("--aggregation", default="mean")
    ap.add_argument("--scores-memory-mib", type=float, default=0, help="0: the scores in memory")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    g = mv.Graph(12, 12)  # gpt2-small
    rng = np.random.default_rng(0)
    signal = rng.gamma(0.3, 1.0, g.n_edges) * rng.choice([-1, 1], g.n_edges)
    s = (signal + rng.normal(scale=2.0, size=(args.inputs, g.n_edges))).astype(np.float32)
    print(f"bootstrap B={args.replicates}, N={args.inputs}, E={g.n_edges}, n={args.n_edges}, {args.aggregation}; "
          f"{jax.default_backend()}")  # fmt: skip
    if args.scores_memory_mib:
        limit = int(args.scores_memory_mib * 2**20)
        folder = tempfile.mkdtemp(prefix="mivar-bench-shards-")
        writer = ShardWriter(folder, *s.shape, 0.0, shard_bytes=limit // 4, budget=limit // 8)
        for rows in np.array_split(np.arange(len(s)), 20):
            writer.put(rows, s[rows])
        s = mv.Scores(writer.finish(), g, "edge", "benchmark")
        del writer
        print(f"scores on disk: {len(s.per_input.files)} shards, column blocks of {limit // 8 / 2**20:.0f} MiB")
    run = lambda: mv.stats.bootstrap(
        s, args.replicates, args.n_edges, graph=g, key=jax.random.key(0), aggregation=args.aggregation
    )
    t0 = time.perf_counter()
    run()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = run()
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times))
    results = {
        "config": vars(args) | {"edges": g.n_edges},
        "first_call_s": first_s,
        "steady_s": steady,
        "all_s": times,
        "mean_jaccard": r.mean_jaccard,
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    print(f"first call {first_s:.1f} s (compilation included); after compilation {steady:.2f} s (median of 3: "
          f"{', '.join(f'{t:.2f}' for t in times)}); mean Jaccard {r.mean_jaccard:.3f}")  # fmt: skip
    print(f"peak RSS {peak_rss_mb():.0f} MB; saved {save(results, args.out, 'stats')}")


if __name__ == "__main__":
    main()
