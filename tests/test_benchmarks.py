"""The side-by-side benchmark runs end to end (``--quick``), so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_benchmark_runs_every_job(tmp_path):
    pytest.importorskip("transformer_lens")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run-quick-cpu.json").read_text())
    assert set(results["jobs"]) == {"exact", "eap", "eap-ig-inputs", "evaluate", "bootstrap"}
    for name, job in results["jobs"].items():
        for side in ("engine", "baseline"):
            assert job[side]["throughput"] > 0 and job[side]["peak_rss_mb"] > 0, (name, side)
        assert job["ratio"] == pytest.approx(job["engine"]["throughput"] / job["baseline"]["throughput"])
    assert results["environment"]["jax"] and "engine" in proc.stdout
