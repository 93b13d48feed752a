"""Results that do not depend on how the work is cut (docs/statistics.md, "Determinism").

- Aggregation and the bootstrap are exact on a fixed-point grid: the same bits for every chunk,
  batch, input order and device count (tests/test_stats.py checks the bootstrap's chunks).
- Per-input scores and circuit metrics computed in batches of different shapes agree within the
  documented float32 tolerance (``SCORE_RTOL`` of the input's scale, the larger of its |clean
  metric| and its largest |score|: exact scores are differences of metrics): XLA picks its
  kernels by shape, so the last bits differ (measured here: ≤ 9·10⁻⁶). The discrete results built on them (top-n
  circuits, their Jaccards, agreement with the full model) are identical whenever no two edges at
  the cut lie within that tolerance, which the tests check rather than assume.

Shapes are chosen to exercise XLA's vectorised and remainder paths: odd batch sizes, and sizes
below and above the SIMD width.
"""

import numpy as np
import pytest

import mivar_jax as mv

SCORE_RTOL = 1e-4  # of the input's scale (docs/statistics.md)


def _setup(hf_dirs, name):
    model = mv.load_model(hf_dirs[name][0])
    data = mv.tasks.make("ioi", model, n=11, seed=3)  # 11 inputs: a remainder batch for every size
    return model, data


def _close_per_input(a, b, metric):
    """|a − b| ≤ SCORE_RTOL × (each input's scale: max(|clean metric|, largest |a|))."""
    scale = np.maximum(np.abs(a).max(axis=1), np.abs(metric))[:, None]
    worst = (np.abs(a - b) / np.maximum(scale, 1e-30)).max()
    assert worst <= SCORE_RTOL, f"per-input scores differ by {worst:.2e} of the input's scale"


def _cut_gap(values, n):
    """|score| gap between the n-th and (n+1)-th ranked edges."""
    r = np.sort(np.abs(values))[::-1]
    return r[n - 1] - r[n]


@pytest.mark.parametrize(
    ("name", "method", "batches"),
    [
        ("gpt2", "exact", (1, 3)),
        ("gpt2", "eap-ig-inputs", (1, 2, 8)),
        ("llama-gqa-llama3", "eap", (1, 2, 8)),
        ("llama-gqa-llama3", "eap-ig-activations", (1, 3)),
    ],
)
def test_per_input_scores_do_not_depend_on_the_batch(hf_dirs, name, method, batches):
    model, data = _setup(hf_dirs, name)
    subset = np.arange(0, model.graph.n_edges, 11) if method == "exact" else None  # every kernel kind
    runs = {b: mv.attribute(model, data, method, steps=2, batch_size=b, subset=subset, progress=False) for b in batches}
    first = runs[batches[0]]
    for b in batches[1:]:
        got, want = runs[b].per_input, first.per_input
        if subset is not None:
            got, want = got[:, subset], want[:, subset]
        _close_per_input(got, want, first.clean_metric)
        np.testing.assert_allclose(runs[b].clean_metric, first.clean_metric, rtol=SCORE_RTOL, atol=1e-6)
    if subset is not None:
        return
    # the discrete results: identical where the cut is not a near-tie within the tolerance
    agg = {b: np.asarray(mv.aggregate(s, "mean")) for b, s in runs.items()}
    scale = np.abs(agg[batches[0]]).max()
    for n in (5, 20, 60):
        if _cut_gap(agg[batches[0]], n) <= 2 * SCORE_RTOL * scale:
            continue  # a near-tie at the cut: a different batch may legitimately pick the other edge
        circuits = [mv.circuits.select(s, n_edges=n) for s in runs.values()]
        for c in circuits[1:]:
            np.testing.assert_array_equal(c.edges, circuits[0].edges)


def test_circuit_metrics_do_not_depend_on_the_batch(hf_dirs):
    model, data = _setup(hf_dirs, "llama-gqa-llama3")
    scores = mv.attribute(model, data, "eap", progress=False)
    circuits = [mv.circuits.select(scores, n_edges=n) for n in (3, 10, 40)]
    runs = {b: mv.evaluate(model, data, circuits, batch_size=b, progress=False) for b in (1, 3)}
    first = runs[1]
    for b in (3,):
        r = runs[b]
        scale = np.abs(first.full_metric).max()
        for name in ("metric", "full_metric", "empty_metric"):
            worst = np.abs(getattr(r, name) - getattr(first, name)).max() / scale
            assert worst <= SCORE_RTOL, f"{name} differs by {worst:.2e} of the largest |metric| (batch {b})"
        # KL = Σ p (log p − log q) over the vocabulary, near 0 for large circuits: its rounding error is
        # absolute, of order eps · ln V (log-softmax terms of size ≤ ln V cancel), whatever the KL
        floor = 4 * np.finfo(np.float32).eps * np.log(model.config.vocab_size)
        np.testing.assert_allclose(r.kl, first.kl, rtol=SCORE_RTOL, atol=floor)
        np.testing.assert_array_equal(r.agree_task, first.agree_task)
        np.testing.assert_array_equal(r.agree_vocab, first.agree_vocab)


def test_results_do_not_depend_on_the_padding(hf_dirs):
    """``TaskData.pad`` (a study runs every dataset at one width): the same per-input scores,
    exact and gradient, and circuit metrics within the tolerance, whatever the extra positions."""
    model, data = _setup(hf_dirs, "gpt2")
    wide = data.pad(data.n_positions + 5)
    assert wide.n_positions == data.n_positions + 5 and (wide.attention_mask[:, data.n_positions :] == 0).all()
    np.testing.assert_array_equal(wide.attention_mask.sum(1), data.attention_mask.sum(1))
    np.testing.assert_array_equal(wide[np.arange(3)].clean, data[np.arange(3)].clean)  # rows trim it away again
    with pytest.raises(ValueError, match="cannot pad"):
        data.pad(data.n_positions - 1)
    subset = np.arange(0, model.graph.n_edges, 7)
    for method in ("exact", "eap-ig-inputs"):
        a, b = (mv.attribute(model, d, method, steps=2, subset=subset if method == "exact" else None, progress=False)
                for d in (data, wide))  # fmt: skip
        keep = subset if method == "exact" else slice(None)
        _close_per_input(b.per_input[:, keep], a.per_input[:, keep], a.clean_metric)
    circuits = [mv.circuits.select(a, n_edges=n) for n in (5, 30)]
    narrow_ev, wide_ev = (mv.evaluate(model, d, circuits, progress=False) for d in (data, wide))
    scale = np.abs(narrow_ev.full_metric).max()
    assert np.abs(wide_ev.metric - narrow_ev.metric).max() <= SCORE_RTOL * scale
    np.testing.assert_array_equal(wide_ev.agree_task, narrow_ev.agree_task)


def test_aggregation_is_exact_whatever_the_order_and_the_weights():
    """The exact sums: the same bits for any order of the inputs, and integer weights equal the
    repeated rows bit for bit (same grid: every row kept). Sizes odd, below and above the SIMD
    width, and values over twelve orders of magnitude."""
    rng = np.random.default_rng(0)
    for n, e in ((1, 3), (7, 17), (37, 65), (129, 1720)):
        scale = 10.0 ** rng.integers(-6, 6, size=e)
        s = (rng.standard_normal((n, e)) * scale).astype(np.float32)
        s[:, 0] = 0.0  # an all-zero edge
        w = rng.integers(1, 5, size=n)
        perm = rng.permutation(n)
        for how in ("mean", "sum", "mean-abs", "abs-mean", "median"):
            base = np.asarray(mv.aggregate(s, how))
            np.testing.assert_array_equal(np.asarray(mv.aggregate(s[perm], how)), base)
            repeated = np.asarray(mv.aggregate(np.repeat(s, w, axis=0), how))
            np.testing.assert_array_equal(np.asarray(mv.aggregate(s, how, w)), repeated)
        # against float64: within the fixed-point grid (2^-24 of the power of two above the
        # largest |score|) plus float32 rounding of the result
        exact = s.astype(np.float64).mean(0)
        grid = 2.0 ** np.ceil(np.log2(np.maximum(np.abs(s).max(0), 1e-30))) * 2.0**-24
        got = np.asarray(mv.aggregate(s, "mean"), np.float64)
        assert np.all(np.abs(got - exact) <= grid + 4 * np.finfo(np.float32).eps * np.abs(exact))
