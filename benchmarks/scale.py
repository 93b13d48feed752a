"""The engine's layers at accelerator scale, one run: exact patching of every edge, EAP-IG on many
inputs, many circuits evaluated, a large bootstrap, with the achieved FLOP/s of exact patching
against large float32 and bfloat16 matmuls measured in the same run, and peak device memory.

    python -m benchmarks.scale [--device cpu|gpu] [--quick] [--out benchmarks/results]

Full sizes (GPT-2-small shape, random weights, GPT-2's tokenizer, IOI prompts; sized for one GPU):
exact over all 32,491 edges × 64 inputs; EAP-IG-inputs m = 5 on 1,000 inputs; 1,000 circuits
evaluated on 16 inputs; bootstrap B = 1,000 of N = 1,000 × 32,491 scores. ``--quick`` runs every job
on a two-layer model of GPT-2's vocabulary and a few inputs (a smoke run: about a minute on a CPU; its
numbers are not the benchmark). Each job is timed on a steady call after a first (compiling) call.
Part of ``benchmarks/device_check.sh``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import environment, peak_rss_mb, save, time_cases

FULL = dict(layers=12, d_model=768, heads=12, exact_inputs=64, ig_inputs=1000, circuits=1000, circuit_inputs=16,
            replicates=1000, boot_inputs=1000, matmul=8192)  # fmt: skip
QUICK = dict(layers=2, d_model=128, heads=4, exact_inputs=4, ig_inputs=16, circuits=20, circuit_inputs=4,
             replicates=50, boot_inputs=100, matmul=512)  # fmt: skip


def matmul_flops_per_s(n: int, dtype) -> float:
    """FLOP/s of an n × n × n matmul in ``dtype`` (float32 accumulation for bfloat16)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    return 2 * n**3 / time_cases({"mm": (f, (a,), {})}, rounds=5)["mm"]["min_s"]


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first device (None where the backend does not report it, e.g. CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def steady(fn) -> dict[str, float]:
    """First call (with compilation) and a second, steady call of ``fn`` (which returns host data)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    return {"first_call_s": first, "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    import mivar_jax as mv
    from benchmarks.common import gpt2_small_config
    from benchmarks.estimators import exact_flops
    from tests.factory import gpt2_tokenizer

    z = QUICK if args.quick else FULL
    cfg = gpt2_small_config(n_layers=z["layers"], d_model=z["d_model"], n_heads=z["heads"], n_kv_heads=z["heads"],
                            d_head=z["d_model"] // z["heads"], d_mlp=4 * z["d_model"])  # fmt: skip
    model = mv.Model(cfg, mv.models.init_params(cfg, jax.random.key(0)), gpt2_tokenizer())
    g = model.graph
    print(f"{cfg.n_layers} layers × d_model {cfg.d_model} ({g.n_edges} edges) on {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}); {'quick' if args.quick else 'full'} run", flush=True)  # fmt: skip
    out = {"quick": args.quick, "device": args.device, "sizes": z, "edges": g.n_edges, "jobs": {}}

    n = z["matmul"]
    peak = {name: matmul_flops_per_s(n, dtype) for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16))}
    out["matmul_flops_per_s"] = peak
    print(f"matmul {n}³: f32 {peak['f32'] / 1e12:.2f} TFLOP/s, bf16 {peak['bf16'] / 1e12:.2f} TFLOP/s", flush=True)

    data = mv.tasks.make("ioi", model, n=z["exact_inputs"], seed=0)
    t = steady(lambda: mv.attribute(model, data, "exact", progress=False))
    achieved = exact_flops(cfg, data, np.arange(g.n_edges)) / t["seconds"]
    out["jobs"]["exact"] = {**t, "inputs": len(data), "edge_inputs_per_s": g.n_edges * len(data) / t["seconds"],
                            "achieved_flops_per_s": achieved, "fraction_of_f32_matmul": achieved / peak["f32"],
                            "fraction_of_bf16_matmul": achieved / peak["bf16"]}  # fmt: skip
    print(f"exact, all {g.n_edges} edges × {len(data)} inputs: {t['seconds']:.1f} s (first {t['first_call_s']:.1f} s); "
          f"{achieved / 1e12:.3f} TFLOP/s = {achieved / peak['f32']:.0%} of f32, {achieved / peak['bf16']:.0%} of bf16 "
          "matmul", flush=True)  # fmt: skip

    data = mv.tasks.make("ioi", model, n=z["ig_inputs"], seed=1)
    t = steady(lambda: mv.attribute(model, data, "eap-ig-inputs", steps=5, progress=False))
    out["jobs"]["eap-ig-inputs"] = {**t, "inputs": len(data), "inputs_per_s": len(data) / t["seconds"]}
    print(f"EAP-IG-inputs m = 5, {len(data)} inputs: {t['seconds']:.1f} s ({len(data) / t['seconds']:.1f} inputs/s)",
          flush=True)  # fmt: skip

    data = mv.tasks.make("ioi", model, n=z["circuit_inputs"], seed=2)
    values = np.random.default_rng(0).normal(size=g.n_edges).astype(np.float32)
    sizes = np.linspace(10, g.n_edges, z["circuits"]).astype(int)  # distinct sizes, small to whole
    masks = np.stack([mv.circuits.select(values, int(k), graph=g).edges for k in sizes])
    t = steady(lambda: mv.evaluate(model, data, masks, progress=False).faithfulness)
    rate = len(masks) * len(data) / t["seconds"]
    out["jobs"]["evaluate"] = {**t, "circuits": len(masks), "inputs": len(data), "circuit_inputs_per_s": rate}
    print(f"evaluation, {len(masks)} circuits × {len(data)} inputs: {t['seconds']:.1f} s ({rate:.0f} circuit·inputs/s)",
          flush=True)  # fmt: skip

    rng = np.random.default_rng(0)
    signal = rng.gamma(0.3, 1.0, g.n_edges) * rng.choice([-1, 1], g.n_edges)
    s = (signal + rng.normal(scale=2.0, size=(z["boot_inputs"], g.n_edges))).astype(np.float32)
    B = z["replicates"]
    t = steady(lambda: mv.stats.bootstrap(s, B, 100, graph=g, key=jax.random.key(0)).jaccard)
    out["jobs"]["bootstrap"] = {**t, "replicates": B, "inputs": len(s), "replicates_per_s": B / t["seconds"]}
    print(f"bootstrap B = {B}, N = {len(s)}: {t['seconds']:.2f} s ({B / t['seconds']:.0f} replicates/s)", flush=True)

    out["peak_device_bytes"], out["peak_rss_mb"] = device_peak_bytes(), peak_rss_mb()
    out["environment"] = environment()
    mem = "n/a" if out["peak_device_bytes"] is None else f"{out['peak_device_bytes'] / 2**30:.1f} GiB"
    path = save(out, args.out, "scale-quick" if args.quick else "scale")
    print(f"peak device memory {mem}; peak RSS {out['peak_rss_mb']:.0f} MiB; saved {path}")
    return out


if __name__ == "__main__":
    main()
