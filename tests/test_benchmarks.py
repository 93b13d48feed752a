"""The benchmarks run end to end (``--quick``, through the one-shot device check), so that they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_device_check_runs_every_job_on_cpu(tmp_path):
    """``benchmarks/device_check.sh --device cpu --quick``: the side-by-side benchmark (every job,
    both sides) and the accelerator-scale jobs, with the achieved fraction of the matmuls."""
    pytest.importorskip("transformer_lens")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--device", "cpu", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run-quick-cpu.json").read_text())
    assert set(results["jobs"]) == {"exact", "eap", "eap-ig-inputs", "evaluate", "bootstrap"}
    for name, job in results["jobs"].items():
        for side in ("engine", "baseline"):
            assert job[side]["throughput"] > 0 and job[side]["peak_rss_mb"] > 0, (name, side)
        assert job["ratio"] == pytest.approx(job["engine"]["throughput"] / job["baseline"]["throughput"])
    assert results["environment"]["jax"] and "engine" in proc.stdout
    scale = json.loads((tmp_path / "scale-quick-cpu.json").read_text())
    assert set(scale["jobs"]) == {"exact", "eap-ig-inputs", "evaluate", "bootstrap"}
    assert all(job["seconds"] > 0 and job["first_call_s"] > 0 for job in scale["jobs"].values())
    exact = scale["jobs"]["exact"]
    assert exact["edge_inputs_per_s"] == pytest.approx(scale["edges"] * exact["inputs"] / exact["seconds"])
    assert 0 < exact["fraction_of_f32_matmul"] < 1.5 and 0 < exact["fraction_of_bf16_matmul"] < 1.5
    assert scale["peak_device_bytes"] is None and scale["peak_rss_mb"] > 0  # CPU: no device memory statistics
    assert "device_check: done" in proc.stdout


def test_device_check_refuses_a_missing_gpu(tmp_path):
    """Asked for a GPU where JAX has none, the check stops at once with a message (no CPU numbers
    passed off as GPU ones)."""
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--device", "gpu", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1 and "JAX sees no GPU" in proc.stderr
    assert not list(tmp_path.iterdir())
