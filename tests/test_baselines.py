"""The PyTorch baselines (TransformerLens hooks, benchmarks/baselines) and the engine agree on a
tiny GPT-2 loaded from the same transformers checkpoint: an independent implementation of every
estimator, of circuit evaluation and of pruning, cross-checking the engine."""

from __future__ import annotations

import numpy as np
import pytest

import mivar_jax as mv

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

from benchmarks.baselines import jobs  # noqa: E402
from benchmarks.baselines.tl_models import from_hf_gpt2  # noqa: E402


def close(baseline, engine, rtol=1e-4):
    """Within rtol relative, measured against the scale of the scores (near-zero scores are noise)."""
    baseline, engine = np.asarray(baseline, np.float64), np.asarray(engine, np.float64)
    np.testing.assert_allclose(baseline, engine, rtol=rtol, atol=rtol * np.abs(engine).max())


@pytest.fixture(scope="module")
def pair(hf_dirs):
    directory, hf_model = hf_dirs["gpt2"]
    model = mv.load_model(directory)
    data = mv.tasks.make("ioi", model, n=6, seed=2)
    return model, from_hf_gpt2(hf_model), data


def test_hooked_transformer_has_the_same_logits(pair):
    model, tl, data = pair
    want = np.asarray(model(data.clean, data.attention_mask))
    got = tl(torch.as_tensor(data.clean, dtype=torch.long)).detach().numpy()
    real = data.attention_mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)


@pytest.mark.parametrize("method", ["exact", "eap", "eap-ig-inputs"])
def test_per_input_and_aggregated_scores_agree(pair, method):
    model, tl, data = pair
    g = model.graph
    engine = mv.attribute(model, data, method, steps=5, progress=False).per_input
    if method == "exact":
        base = jobs.exact_edges(tl, g, data, np.arange(g.n_edges), batch_size=4)
        summed = base.sum(0)
    else:
        steps = 0 if method == "eap" else 5
        base = jobs.eap_ig_inputs(tl, g, data, steps=steps, batch_size=4)
        summed = jobs.eap_ig_inputs(tl, g, data, steps=steps, batch_size=4, per_input=False)
    close(base, engine)
    close(summed / len(data), engine.mean(0))  # the reference library's batch score
    for n in (5, 20):
        a = mv.circuits.select(summed / len(data), n, graph=g).edges
        b = mv.circuits.select(engine.mean(0), n, graph=g).edges
        np.testing.assert_array_equal(a, b)


def test_circuit_evaluation_agrees(pair):
    model, tl, data = pair
    g = model.graph
    rng = np.random.default_rng(0)
    masks = np.stack(
        [np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)] + [rng.random(g.n_edges) < p for p in (0.2, 0.5, 0.8)]
    )
    base = jobs.evaluate_circuits(tl, g, data, masks, batch_size=4)
    ev = mv.evaluate(model, data, masks, progress=False)
    close(base, ev.metric)
    close(base[0], ev.full_metric)
    close(base[1], ev.empty_metric)


def test_python_pruning_agrees_with_the_vectorised_one():
    g = mv.Graph(3, 2)
    rng = np.random.default_rng(1)
    masks = rng.random((30, g.n_edges)) < 0.15
    want = np.asarray(mv.circuits.prune(g, masks)[0])
    for m, w in zip(masks, want, strict=True):
        np.testing.assert_array_equal(jobs.prune(g, m), w)
