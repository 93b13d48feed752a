"""Exact patching against brute-force oracle patching on the architectures of tests/test_families.py
(split from it so that ``--dist loadfile`` runs them on another worker)."""

from __future__ import annotations

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.patching import first_changes, windows
from tests.test_estimators import _brute_force


@pytest.mark.parametrize("name", ["qwen3-sliding", "pythia", "gemma2", "olmo2"])
def test_exact_equals_brute_force_patching(hf_dirs, name):
    """Windowed exact kernels against one oracle forward per edge: on sliding-window models the
    windows (first change … answer) start past the span, so their cached keys are partly out of
    reach; on the parallel model the MLP reads the layer's input; on Gemma 2 a patched head changes
    every head's share of the post-normed write, with both soft-caps active."""
    model = mv.load_model(hf_dirs[name][0])
    data = mv.tasks.make("ioi", model, n=3, seed=1)
    width = windows(data, "patch")
    first = first_changes(data.clean, data.corrupted, data.attention_mask, data.answer_pos)
    assert (width < data.n_positions).all()
    if model.config.windows:  # the answer's query cannot see the first changed position in a sliding layer
        assert (data.answer_pos - first >= max(model.config.windows)).any()
    scores = mv.attribute(model, data, method="exact", batch_size=2, progress=False)
    expected = _brute_force(model, data)
    np.testing.assert_allclose(scores.per_input, expected, atol=2e-5 * np.abs(expected).max() + 1e-6, rtol=1e-3)
    assert np.abs(expected).max() > 1e-3
    nodes = mv.attribute(model, data, method="exact", level="node", batch_size=2, progress=False)
    expected = _brute_force(model, data, "node")
    np.testing.assert_allclose(nodes.per_input, expected, atol=2e-5 * np.abs(expected).max() + 1e-6, rtol=1e-3)
