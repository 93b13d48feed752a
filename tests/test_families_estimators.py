"""Every estimator, circuit evaluation and a tiny study on the architectures of tests/test_families.py
whose compiled paths differ (split from it so that ``--dist loadfile`` runs the halves on different
workers). The others share these paths: Mistral and Gemma 3 the windows, QK-norm and post-norms of
Qwen3 and Gemma 2; Phi-3 and the sequential NeoX the Llama and NeoX blocks; each is still checked
through the graph form and the slot gradients in tests/test_families.py (the suite's time budget)."""

from __future__ import annotations

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.estimators import METHODS
from tests.test_study import tiny_config


@pytest.fixture(scope="module", params=["qwen3-sliding", "pythia", "gemma2", "olmo2"])
def family(request, hf_dirs):
    directory, torch_model = hf_dirs[request.param]
    return request.param, mv.load_model(directory), torch_model


def test_every_estimator_and_circuit_evaluation_run(family):
    _, model, _ = family
    data = mv.tasks.make("ioi", model, n=4, seed=2)
    base = mv.tasks.evaluate_model(model, data)
    scores = {method: mv.attribute(model, data, method=method, steps=5, progress=False) for method in METHODS}
    for s in scores.values():
        assert s.per_input.shape == (4, model.graph.n_edges) and np.isfinite(s.per_input).all()
        np.testing.assert_allclose(s.clean_metric, base.clean, rtol=1e-4, atol=1e-5)
    # the gradient methods estimate exact patching: strongly correlated on a tiny model
    assert np.corrcoef(mv.aggregate(scores["eap-ig-inputs"]), mv.aggregate(scores["exact"]))[0, 1] > 0.5
    g = model.graph
    ev = mv.evaluate(model, data, np.stack([np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)]), progress=False)
    np.testing.assert_allclose(ev.metric[0], base.clean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.metric[1], base.corrupted, rtol=1e-4, atol=1e-5)


def test_a_tiny_study_runs(hf_dirs, tmp_path):
    cfg = tiny_config(
        hf_dirs["qwen3-sliding"][0], data={"seeds": [0]}, estimator={"methods": ["eap-ig-inputs", "eap"], "steps": [2]}
    )  # the reference: exact node scores on a few inputs
    results = mv.Study(cfg).run(tmp_path / "run", progress=False, report=False)
    assert results  # every cell produced its results
