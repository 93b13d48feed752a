"""Circuit evaluation throughput on a GPT-2-small-shaped model (random weights, GPT-2's tokenizer,
IOI prompts): C circuits × N inputs with ``mv.evaluate`` against the C·N equivalent plain forwards
(the same batches through the ordinary forward pass, C times), in one run on one machine.

    python -m benchmarks.circuits [--circuits 20] [--inputs 16] [--batch-size 8] [--out DIR]

Target (issue 5): evaluation costs at most 1.2× the plain forwards (the issue's scale is
100 circuits × 200 inputs; the ratio does not depend on the counts once compiled).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import mivar_jax as mv
from benchmarks.common import environment, gpt2_small_ioi, peak_rss_mb, save
from mivar_jax.models.transformer import forward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--circuits", type=int, default=20)
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    model, data = gpt2_small_ioi(args.inputs)
    cfg, g = model.config, model.graph
    values = np.random.default_rng(0).normal(size=g.n_edges).astype(np.float32)
    sizes = np.unique(np.geomspace(30, g.n_edges, args.circuits).astype(int))
    masks = np.stack([mv.circuits.select(values, int(n), graph=g).edges for n in sizes])
    C = len(masks)
    print(
        f"GPT-2-small shape, {C} circuits × {len(data)} IOI prompts of {data.n_positions} positions; {jax.default_backend()}"
    )

    t0 = time.perf_counter()
    # every kernel shape (one per window width and circuit chunk) compiled first, by the same call
    mv.evaluate(model, data, masks, batch_size=args.batch_size, progress=False)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = mv.evaluate(model, data, masks, batch_size=args.batch_size, progress=False)
    eval_s = time.perf_counter() - t0

    plain = jax.jit(lambda p, b: forward(cfg, p, b.clean, b.attention_mask, logit_positions=b.answer_pos))
    batches = [b for b, _ in data.batches(args.batch_size)]
    jax.block_until_ready(plain(model.params, batches[0]))
    t0 = time.perf_counter()
    for _ in range(C):
        for b in batches:
            jax.block_until_ready(plain(model.params, b))
    plain_s = time.perf_counter() - t0

    results = {
        "config": {"model": cfg.name, "circuits": C, "inputs": len(data), "positions": data.n_positions},
        "evaluate_s": eval_s,
        "first_call_s": warm_s,
        "plain_forwards_s": plain_s,
        "ratio_to_plain": eval_s / plain_s,
        "circuit_inputs_per_s": C * len(data) / eval_s,
        "faithfulness_range": [float(np.min(ev.faithfulness)), float(np.max(ev.faithfulness))],
        "peak_rss_mb": peak_rss_mb(),
        "environment": environment(),
    }
    print(
        f"evaluate: {eval_s:.2f} s ({C * len(data) / eval_s:.1f} circuit·inputs/s; first call {warm_s:.1f} s) vs "
        f"{C * len(data)} plain forwards {plain_s:.2f} s → {eval_s / plain_s:.2f}x"
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB; saved {save(results, args.out, 'circuits')}")


if __name__ == "__main__":
    main()
