"""The engine against the PyTorch baselines (TransformerLens hooks, ``benchmarks/baselines``), side by
side: same model weights, same inputs, same machine, one run.

    python -m benchmarks.run [--quick] [--device cpu|gpu] [--out benchmarks/results]

Jobs (the issue's): exact edge patching, EAP, EAP-IG-inputs (m = 5), evaluation of 100 circuits,
bootstrap B = 1000. Models: a GPT-2-small-shaped model (random weights, written by transformers,
loaded by both sides from the same checkpoint; GPT-2's real tokenizer, IOI prompts) for exact
patching and circuit evaluation; smollm2-135m for the gradient methods (the engine from its GGUF,
the baseline from transformers' GGUF loading, grouped-query attention ungrouped). ``--quick``
shrinks every model and count so the whole run takes under two minutes (a smoke run for CI; its
numbers are not the benchmark).

Per job: wall time of a steady run (the engine's first call, which includes compilation, is
reported apart with JAX's compile time), throughput, peak RSS during the job (and device memory on
GPU), and engine/baseline throughput. The exact-patching baseline runs a fixed random subset of
edges, the circuit-evaluation baseline a subset of the circuits; their throughputs are extrapolated
per edge·input and per circuit·input, as stated in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import jax
import numpy as np

from benchmarks.common import environment, save

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
GPT2_QUICK = dict(n_layer=2, n_head=4, n_embd=128, n_positions=128)
LLAMA_QUICK = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, max_position_embeddings=128)  # fmt: skip


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss / 2**20)
        return False


def _device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def engine_run(fn, work: float, warmup=None) -> dict:
    """First call (compile + run; of ``warmup`` if given: the same kernels on less work) and a steady
    call of ``fn``; throughput = work / steady seconds."""
    from mivar_jax._timing import Stopwatch

    with Stopwatch() as first:
        jax.block_until_ready((warmup or fn)())
    with PeakRSS() as mem, Stopwatch() as steady:
        jax.block_until_ready(fn())
    return {
        "first_call_s": round(first.seconds, 3),
        "compile_s": round(first.compile_seconds, 3),
        "steady_s": round(steady.seconds, 3),
        "throughput": work / steady.seconds,
        "peak_rss_mb": round(mem.peak, 1),
        "device_peak_mb": _device_peak_mb(),
    }


def baseline_run(fn, work: float, device: str) -> dict:
    import torch

    with PeakRSS() as mem:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {
        "steady_s": round(seconds, 3),
        "throughput": work / seconds,
        "peak_rss_mb": round(mem.peak, 1),
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def _job(name, unit, engine, baseline, note="") -> dict:
    ratio = engine["throughput"] / baseline["throughput"]
    print(f"{name:<22} engine {engine['throughput']:>12.2f} {unit}  (steady {engine['steady_s']:.2f} s, first call "
          f"{engine['first_call_s']:.1f} s incl. compile {engine['compile_s']:.1f} s) | baseline "
          f"{baseline['throughput']:>10.3f} {unit} ({baseline['steady_s']:.2f} s) | ×{ratio:.1f}"
          + (f"  [{note}]" if note else ""), flush=True)  # fmt: skip
    return {"unit": unit, "engine": engine, "baseline": baseline, "ratio": ratio, "note": note}


# ---------------------------------------------------------------------------------------------- models
def gpt2_pair(folder: str, quick: bool, device: str):
    """(engine model, HookedTransformer) with one GPT-2-shaped checkpoint's weights."""
    import mivar_jax as mv
    from benchmarks.baselines.tl_models import from_hf_gpt2
    from tests.factory import make_hf_model

    hf = make_hf_model("gpt2", folder, **(GPT2_QUICK if quick else GPT2_SMALL))
    return mv.load_model(folder), from_hf_gpt2(hf).to(device)


def llama_pair(folder: str, quick: bool, device: str):
    """smollm2-135m (or, quick, a tiny random Llama with GQA) for both sides."""
    import mivar_jax as mv
    from benchmarks.baselines.tl_models import from_hf_llama

    if quick:
        from tests.factory import make_hf_model

        hf = make_hf_model("llama", folder, **LLAMA_QUICK)
        return mv.load_model(folder), from_hf_llama(hf).to(device)
    from transformers import AutoModelForCausalLM

    from mivar_jax.models.loading import REGISTERED

    path = REGISTERED["smollm2-135m"].path()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path)).eval()
    return mv.load_model("smollm2-135m"), from_hf_llama(hf).to(device)


# ---------------------------------------------------------------------------------------------- jobs
def exact_job(model, tl, data, quick, device):
    import mivar_jax as mv
    from benchmarks.baselines import jobs

    g = model.graph
    # the engine: every k-th destination slot with all its edges (all layers, realistic kernels)
    every = 1 if quick else 32
    slots = np.arange(0, g.n_dst, every)
    subset = np.nonzero(np.isin(g.edge_dst, slots))[0]
    engine = engine_run(lambda: mv.attribute(model, data, "exact", subset=subset, progress=False).per_input,
                        len(subset) * len(data))  # fmt: skip
    edges = np.sort(np.random.default_rng(0).choice(g.n_edges, 8 if quick else 24, replace=False))
    base = baseline_run(lambda: jobs.exact_edges(tl, g, data, edges, batch_size=len(data)), len(edges) * len(data),
                        device)  # fmt: skip
    note = (f"engine: {len(subset)} edges into every {every}th slot; baseline: {len(edges)} random edges, "
            f"extrapolated per edge·input; {len(data)} inputs")  # fmt: skip
    return _job("exact edge patching", "edge·inputs/s", engine, base, note)


def gradient_job(model, tl, data, steps, device, label):
    import mivar_jax as mv
    from benchmarks.baselines import jobs

    g = model.graph
    method = "eap" if steps == 0 else "eap-ig-inputs"
    engine = engine_run(lambda: mv.attribute(model, data, method, steps=max(steps, 1), progress=False).per_input,
                        len(data))  # fmt: skip
    base = baseline_run(lambda: jobs.eap_ig_inputs(tl, g, data, steps=steps, batch_size=8, per_input=False),
                        len(data), device)  # fmt: skip
    name = "EAP" if steps == 0 else f"EAP-IG-inputs m={steps}"
    note = f"{label}, {len(data)} inputs; engine keeps per-input scores, baseline sums them (reference)"
    return _job(name, "inputs/s", engine, base, note)


def evaluation_job(model, tl, data, n_circuits, device):
    import mivar_jax as mv
    from benchmarks.baselines import jobs

    g = model.graph
    values = np.random.default_rng(0).normal(size=g.n_edges).astype(np.float32)
    sizes = np.unique(np.geomspace(10, g.n_edges, n_circuits).astype(int))
    masks = np.stack([mv.circuits.select(values, int(n), graph=g).edges for n in sizes])
    # the first call is a whole one: circuit chunks are sized by the stack (``engine.bucket``), so
    # fewer circuits would compile other kernels
    engine = engine_run(lambda: mv.evaluate(model, data, masks, progress=False).metric, len(masks) * len(data))
    some = masks[np.unique(np.linspace(0, len(masks) - 1, 10 if len(masks) <= 10 else 4).astype(int))]
    base = baseline_run(lambda: jobs.evaluate_circuits(tl, g, data, some, batch_size=len(data)),
                        len(some) * len(data), device)  # fmt: skip
    note = f"{len(masks)} circuits × {len(data)} inputs; baseline: {len(some)} of them, extrapolated per circuit·input"
    return _job("circuit evaluation", "circuit·inputs/s", engine, base, note)


def bootstrap_job(replicates, n_inputs, device):
    import mivar_jax as mv
    from benchmarks.baselines import jobs

    g = mv.Graph(12, 12)  # gpt2-small's 32,491 edges
    rng = np.random.default_rng(0)
    signal = rng.gamma(0.3, 1.0, g.n_edges) * rng.choice([-1, 1], g.n_edges)
    s = (signal + rng.normal(scale=2.0, size=(n_inputs, g.n_edges))).astype(np.float32)
    engine = engine_run(lambda: mv.stats.bootstrap(s, replicates, 100, graph=g, key=jax.random.key(0)).jaccard,
                        replicates)  # fmt: skip
    base = baseline_run(lambda: jobs.bootstrap(g, s, replicates, 100), replicates, device)
    note = f"B={replicates}, N={n_inputs}, E={g.n_edges}, top-100 pruned; engine adds intervals (percentile, BCa)"
    return _job(f"bootstrap B={replicates}", "replicates/s", engine, base, note)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models and counts: a smoke run (< 2 min)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--jobs", default="exact,eap,eap-ig,evaluate,bootstrap", help="comma-separated subset")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    torch_device = "cuda" if args.device == "gpu" else "cpu"
    import torch

    import mivar_jax as mv

    torch.manual_seed(0)
    wanted = set(args.jobs.split(","))
    n = 4 if args.quick else 16
    print(f"engine vs baseline on {jax.devices()[0].device_kind} ({jax.default_backend()}); torch {torch.__version__} "
          f"on {torch_device}; {'quick' if args.quick else 'full'} run", flush=True)  # fmt: skip
    results = {"quick": args.quick, "device": args.device, "environment": environment(), "jobs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if wanted & {"exact", "evaluate"}:
            model, tl = gpt2_pair(os.path.join(tmp, "gpt2"), args.quick, torch_device)
            data = mv.tasks.make("ioi", model, n=n, seed=0)
            if "exact" in wanted:
                results["jobs"]["exact"] = exact_job(model, tl, data[: n // 2], args.quick, torch_device)
            if "evaluate" in wanted:
                results["jobs"]["evaluate"] = evaluation_job(
                    model, tl, data[:4], 10 if args.quick else 100, torch_device
                )
            del model, tl
        if wanted & {"eap", "eap-ig"}:
            model, tl = llama_pair(os.path.join(tmp, "llama"), args.quick, torch_device)
            label = "tiny random Llama (GQA)" if args.quick else "smollm2-135m"
            data = mv.tasks.make("ioi", model, n=n, seed=0)
            if "eap" in wanted:
                results["jobs"]["eap"] = gradient_job(model, tl, data, 0, torch_device, label)
            if "eap-ig" in wanted:
                results["jobs"]["eap-ig-inputs"] = gradient_job(model, tl, data, 5, torch_device, label)
            del model, tl
    if "bootstrap" in wanted:
        B = 50 if args.quick else 1000
        results["jobs"]["bootstrap"] = bootstrap_job(B, 200 if args.quick else 1000, torch_device)
    name = "run-quick" if args.quick else "run"
    previous = os.path.join(args.out, f"{name}-{jax.default_backend()}.json")
    if set(results["jobs"]) != {"exact", "eap", "eap-ig-inputs", "evaluate", "bootstrap"} and os.path.exists(previous):
        with open(previous) as f:  # a run of some jobs keeps the others' latest results
            results["jobs"] = {**json.load(f)["jobs"], **results["jobs"]}
    path = save(results, args.out, name)
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
