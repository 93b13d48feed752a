"""Statistics against numpy/scipy and planted truths."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import scipy.stats

import mivar_jax as mv
from mivar_jax.stats.bootstrap import _jackknife_aggregate


def _synthetic(n=60, layers=3, heads=3, seed=0, noise=1.5):
    g = mv.Graph(layers, heads)
    rng = np.random.default_rng(seed)
    signal = rng.gamma(0.6, 1.0, g.n_edges) * rng.choice([-1, 1], g.n_edges)
    s = signal + rng.normal(scale=noise, size=(n, g.n_edges))
    return g, s.astype(np.float32)


def test_edge_variability_matches_numpy():
    _, s = _synthetic()
    s[:, 0] = 0.0  # a zero-mean edge
    v = mv.stats.edge_variability(s)
    mean, std = s.mean(0), s.std(0, ddof=1)
    np.testing.assert_allclose(v.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v.std, std, rtol=1e-4)
    np.testing.assert_allclose(v.cv[1:], std[1:] / np.abs(mean[1:]), rtol=1e-4)
    np.testing.assert_allclose(v.snr[1:], np.abs(mean[1:]) / std[1:], rtol=1e-4)
    assert np.isinf(v.cv[0]) and np.isinf(v.n_needed[0]) and v.sign_agreement[0] == 0 and v.snr[0] == 0
    constant = mv.stats.edge_variability(np.full((5, 2), [0.0, 3.0], np.float32))
    np.testing.assert_array_equal(constant.snr, [0.0, np.inf])  # no spread: no signal / all signal
    mostly_zero = np.zeros((10, 1), np.float32)
    mostly_zero[:3] = 1.0
    assert mv.stats.edge_variability(mostly_zero).sign_agreement[0] == pytest.approx(0.3)  # below ½: range 0…1
    np.testing.assert_allclose(v.sign_agreement[1:], (np.sign(s[:, 1:]) == np.sign(mean[1:])).mean(0))
    np.testing.assert_allclose(v.quantiles, np.quantile(s, mv.stats.intrinsic.QUANTILES, axis=0), rtol=1e-5, atol=1e-5)
    expected_n = np.ceil((1.959964 * std[1:] / np.abs(mean[1:])) ** 2)
    np.testing.assert_allclose(v.n_needed[1:], expected_n, rtol=1e-4, atol=1)  # ±1: float32 at a ceil boundary
    assert json.dumps(v.to_json())


def test_estimator_noise_matches_numpy_and_scipy():
    g, x = _synthetic(n=12)
    rng = np.random.default_rng(1)
    a = (0.8 * x + rng.normal(scale=0.7, size=x.shape)).round(1).astype(np.float32)  # rounding: rank ties
    x = x.round(1)
    r = mv.stats.estimator_noise(a, x, n_edges=(5, 20), graph=g)
    d = a.astype(np.float64) - x
    np.testing.assert_allclose(r.bias, d.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.rmse, np.sqrt((d**2).mean(0)), rtol=1e-4)
    np.testing.assert_allclose(r.intrinsic + r.noise + 2 * r.covariance, a.var(0, ddof=1), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(r.intrinsic, x.var(0, ddof=1), rtol=1e-4)
    np.testing.assert_allclose(
        r.spearman, [scipy.stats.spearmanr(ai, xi).statistic for ai, xi in zip(a, x, strict=True)], atol=1e-5
    )
    np.testing.assert_allclose(
        r.kendall, [scipy.stats.kendalltau(ai, xi).statistic for ai, xi in zip(a, x, strict=True)], atol=1e-6
    )
    for n in (5, 20):
        ca = set(mv.circuits.select(a.mean(0), n, graph=g).edge_names)
        cx = set(mv.circuits.select(x.mean(0), n, graph=g).edge_names)
        assert r.topn_jaccard[n] == pytest.approx(len(ca & cx) / len(ca | cx) if ca | cx else 1.0)
    assert json.dumps(r.to_json()) and json.dumps(r.summary())
    with pytest.raises(ValueError, match="same shape"):
        mv.stats.estimator_noise(a, x[:, :5])


@pytest.mark.parametrize("method", ["multinomial", "subsample", "disjoint-splits"])
def test_bootstrap_circuits_and_jaccards_against_one_by_one(method):
    g, s = _synthetic(noise=6.0)
    B, n = (6, 15) if method == "disjoint-splits" else (12, 15)
    r = mv.stats.bootstrap(s, B, n, graph=g, key=jax.random.key(3), method=method, chunk=5)
    sets = []
    for b in range(B):
        c = mv.circuits.select(r.aggregated[b], n, graph=g)  # the circuits module, one by one
        np.testing.assert_array_equal(r.circuits[b], c.edges)
        np.testing.assert_array_equal(r.nodes[b], c.nodes)
        sets.append((set(np.nonzero(c.edges)[0]), set(np.nonzero(c.nodes)[0])))
    jac = lambda p, q: len(p & q) / len(p | q) if p | q else 1.0
    for i in range(B):
        for j in range(B):
            assert r.jaccard[i, j] == pytest.approx(jac(sets[i][0], sets[j][0]))
            assert r.node_jaccard[i, j] == pytest.approx(jac(sets[i][1], sets[j][1]))
    pairs = [jac(sets[i][0], sets[j][0]) for i in range(B) for j in range(B) if i != j]
    assert r.mean_jaccard == pytest.approx(np.mean(pairs), rel=1e-5)
    assert r.jaccard_cv == pytest.approx(np.std(pairs) / np.mean(pairs), rel=1e-4)
    np.testing.assert_allclose(r.inclusion_frequency, r.circuits.mean(0))
    np.testing.assert_array_equal(r.majority_circuit, r.circuits.mean(0) >= 0.5)
    full = set(mv.circuits.select(s.mean(0), n, graph=g).edge_names)
    assert {g.edge_names[e] for e in np.nonzero(r.full_circuit)[0]} == full
    maj = set(np.nonzero(r.majority_circuit)[0])
    np.testing.assert_allclose(r.jaccard_to_majority, [jac(e, maj) for e, _ in sets], rtol=1e-6)
    np.testing.assert_array_equal(r.sizes, [len(e) for e, _ in sets])
    assert json.dumps(r.to_json(arrays=True))
    if method == "disjoint-splits":  # disjoint parts: the per-part sums add up to the sum of their union
        sums = mv.stats.bootstrap(s, B, n, graph=g, key=jax.random.key(3), method=method, aggregation="sum")
        assert len(s) % B == 0  # the parts cover every input exactly once
        np.testing.assert_allclose(sums.aggregated.sum(0), s.sum(0), rtol=1e-4, atol=1e-3)


def test_bootstrap_standard_error_matches_sigma_over_root_n():
    g = mv.Graph(1, 1)
    rng = np.random.default_rng(4)
    sigma, N = 2.0, 400
    s = rng.normal(scale=sigma, size=(N, g.n_edges)).astype(np.float32)
    r = mv.stats.bootstrap(s, 2000, 1, graph=g, key=jax.random.key(0))
    se = r.aggregated.std(0, ddof=1)
    np.testing.assert_allclose(se, s.std(0, ddof=1) / np.sqrt(N), rtol=0.08)  # 2000 replicates: ~2% sampling error


@pytest.mark.parametrize("ci", ["percentile", "BCa"])
def test_intervals_match_scipy_given_the_same_resamples(ci):
    rng = np.random.default_rng(5)
    x = rng.exponential(size=40)  # skewed: BCa differs from the percentile interval
    res = scipy.stats.bootstrap((x,), np.mean, n_resamples=999, method=ci, confidence_level=0.9, rng=1)
    star = res.bootstrap_distribution[:, None]
    if ci == "percentile":
        ours = mv.stats.percentile_interval(star, 0.9)
    else:
        jack = ((x.sum() - x) / (len(x) - 1))[:, None]
        ours = mv.stats.bca_interval(star, np.array([x.mean()]), jack, 0.9)
    np.testing.assert_allclose(
        np.asarray(ours)[:, 0], [res.confidence_interval.low, res.confidence_interval.high], rtol=1e-5
    )


@pytest.mark.parametrize("how", ["mean", "sum", "mean-abs", "abs-mean", "median"])
@pytest.mark.parametrize("n", [7, 8])
def test_closed_form_jackknife(how, n):
    s = np.random.default_rng(6).normal(size=(n, 5)).astype(np.float32)
    got = np.asarray(_jackknife_aggregate(jax.numpy.asarray(s), how))
    expected = np.stack([np.asarray(mv.aggregate(np.delete(s, i, 0), how)) for i in range(n)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_bootstrap_verdict_keys_and_bad_input():
    g, s = _synthetic(n=30)
    path = ["input->logits", "input->m0", "m0->logits", "input->a1.h0<v>", "a1.h0->logits", "input->a0.h1<k>"]
    path += ["a0.h1->m2", "m2->logits"]
    strong = s.copy()
    strong[:, [g.edge_index(e) for e in path]] += 50  # eight dominant connected edges: a stable circuit
    r = mv.stats.bootstrap(strong, 100, 8, graph=g, key=jax.random.key(1))
    assert r.mean_jaccard == 1.0 and r.stable and r.verdict.startswith("stable")
    assert set(np.asarray(g.edge_names)[r.full_circuit]) == set(path)
    lo, hi = r.jaccard_ci_percentile["mean_jaccard"]
    assert lo <= r.mean_jaccard <= hi
    noisy = _synthetic(n=30, noise=6.0)[1]
    weak = mv.stats.bootstrap(noisy, 100, 40, graph=g, key=jax.random.key(1))
    assert weak.sizes.mean() > 5 and not weak.stable and weak.verdict.startswith("unstable")
    lo, hi = weak.jaccard_ci_percentile["mean_jaccard"]
    assert lo < weak.mean_jaccard < hi
    empty = mv.stats.bootstrap(strong, 100, 1, graph=g, key=jax.random.key(1))  # one edge never connects
    assert not empty.stable and "empty after pruning" in empty.verdict
    assert mv.stats.bootstrap(s, 20, 8, graph=g, key=jax.random.key(1)).verdict.startswith("undetermined")
    a = mv.stats.bootstrap(s, 10, 8, graph=g, key=jax.random.key(2))
    c = mv.stats.bootstrap(s, 10, 8, graph=g, key=jax.random.key(9))
    assert not np.array_equal(a.aggregated, c.aggregated)
    scores = mv.Scores(s, g, "edge", "eap")
    np.testing.assert_array_equal(mv.stats.bootstrap(scores, 10, 8, key=jax.random.key(2)).aggregated, a.aggregated)
    with pytest.raises(ValueError, match="n_replicates must be an integer ≥ 2"):
        mv.stats.bootstrap(s, 1, 8, graph=g, key=jax.random.key(0))
    for bad in (0, g.n_edges + 1):
        with pytest.raises(ValueError, match="n_edges must be an integer"):
            mv.stats.bootstrap(s, 10, bad, graph=g, key=jax.random.key(0))
    nan = s.copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN/inf values .*input 3, edge 4"):
        mv.stats.bootstrap(nan, 10, 8, graph=g, key=jax.random.key(0))
    with pytest.raises(ValueError, match="scores have"):
        mv.stats.bootstrap(s[:, :-1], 10, 8, graph=g, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key is required"):
        mv.stats.bootstrap(s, 10, 8, graph=g)
    with pytest.raises(ValueError, match="pass graph="):
        mv.stats.bootstrap(s, 10, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="leave no input"):
        mv.stats.bootstrap(s, 31, 8, graph=g, key=jax.random.key(0), method="disjoint-splits")
    with pytest.raises(ValueError, match="unknown bootstrap method"):
        mv.stats.bootstrap(s, 10, 8, graph=g, key=jax.random.key(0), method="jackknife")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be an integer ≥ 1"):
            mv.stats.bootstrap(s, 10, 8, graph=g, key=jax.random.key(0), chunk=bad)
    for bad in (0, np.uint32(3), "seed"):
        with pytest.raises(ValueError, match="key must be a PRNG key"):
            mv.stats.bootstrap(s, 10, 8, graph=g, key=bad)
    with pytest.raises(ValueError, match="n_edges must be an integer"):
        mv.stats.bootstrap(s, 10, 2.5, graph=g, key=jax.random.key(0))
    # a legacy uint32 key works and equals nothing else's
    assert mv.stats.bootstrap(s, 10, 8, graph=g, key=jax.random.PRNGKey(2)).aggregated.shape == (10, g.n_edges)


@pytest.mark.parametrize(
    ("method", "aggregation", "chunks"),
    [
        ("multinomial", "mean", (1, 2, 3, 8, 17, 64, None)),
        ("multinomial", "mean-abs", (1, 5, None)),
        ("multinomial", "median", (1, 3, None)),
        ("subsample", "mean", (1, 3, None)),
        ("disjoint-splits", "sum", (1, 3, None)),
    ],
)
def test_bootstrap_identical_for_every_chunk(method, aggregation, chunks):
    """The same bits whatever the chunk (odd sizes, above and below the SIMD width): the
    aggregates are exact sums on a fixed-point grid, so XLA's shape-dependent kernels cannot
    change them (a plain float32 W·S differed in the last bit on some CPUs)."""
    g, s = _synthetic(n=37, noise=4.0)
    B = 23 if method != "disjoint-splits" else 7
    runs = [
        mv.stats.bootstrap(s, B, 9, graph=g, key=jax.random.key(4), method=method, aggregation=aggregation, chunk=c)
        for c in chunks
    ]
    for r in runs[1:]:
        for name in ("aggregated", "circuits", "nodes", "jaccard", "cut_ties"):
            np.testing.assert_array_equal(getattr(r, name), getattr(runs[0], name), err_msg=name)
        assert r.mean_jaccard == runs[0].mean_jaccard and r.verdict == runs[0].verdict


def test_bootstrap_verdict_refuses_empty_replicates():
    """Most replicates pick a lone dangling edge (empty after pruning): two empty circuits have
    Jaccard 1, so the mean pairwise Jaccard passes 0.8, but the verdict must not say stable."""
    g = mv.Graph(2, 2)
    rng = np.random.default_rng(11)
    s = rng.normal(scale=0.01, size=(40, g.n_edges)).astype(np.float32)
    dangling, connected = g.edge_index("a0.h0->m1"), g.edge_index("input->logits")
    s[:, dangling] += 1.0
    s[:2, connected] += 8.5  # ahead of the dangling edge only in replicates that draw these inputs often
    r = mv.stats.bootstrap(s, 100, 1, graph=g, key=jax.random.key(0))
    assert 50 <= r.n_empty < 100 and r.mean_jaccard >= 0.8
    assert r.n_empty == int((r.sizes == 0).sum()) and r.summary()["n_empty"] == r.n_empty
    assert not r.stable and r.verdict.startswith("undetermined") and f"{r.n_empty} of 100" in r.verdict


def test_bootstrap_verdict_names_the_method_and_the_interval():
    g, s = _synthetic(n=40)
    strong = s.copy()
    path = ["input->logits", "input->m0", "m0->logits"]
    strong[:, [g.edge_index(e) for e in path]] += 50
    multi = mv.stats.bootstrap(strong, 100, 3, graph=g, key=jax.random.key(1))
    assert multi.stable and "the paper's bar" in multi.verdict and "Monte-Carlo 95% interval" in multi.verdict
    assert multi.summary()["jaccard_interval"] == "Monte-Carlo interval over the B replicates"
    sub = mv.stats.bootstrap(strong, 100, 3, graph=g, key=jax.random.key(1), method="subsample")
    assert sub.stable and "subsamples without replacement" in sub.verdict and "paper's bar" not in sub.verdict
    split = mv.stats.bootstrap(strong, 4, 3, graph=g, key=jax.random.key(1), method="disjoint-splits")
    assert split.verdict.startswith("undetermined") and "disjoint splits" in split.verdict


def test_bootstrap_counts_ties_at_the_cut():
    g = mv.Graph(2, 2)
    s = np.zeros((6, g.n_edges), np.float32)
    named = [g.edge_index(e) for e in ("input->logits", "input->m0", "m0->logits", "input->m1")]
    s[:, named] = [[4.0, 3.0, 2.0, 1.0]]  # four distinct edges (a connected circuit), then ties at zero
    r = mv.stats.bootstrap(s, 10, 6, graph=g, key=jax.random.key(0))
    agg = np.abs(r.aggregated)
    for b in range(10):  # oracle: the unselected edges equal to the n-th selected value
        top = np.lexsort((np.arange(g.n_edges), -agg[b]))[:6]
        nth = agg[b, top].min()
        assert r.cut_ties[b] == ((agg[b] == nth).sum() - (agg[b, top] == nth).sum())
    assert (r.cut_ties == g.n_edges - 6).all() and r.full_cut_ties == g.n_edges - 6
    assert "ties at the top-6 cut" in r.verdict
    clear = mv.stats.bootstrap(s, 10, 3, graph=g, key=jax.random.key(0))
    assert not clear.cut_ties.any() and "ties" not in clear.verdict


def test_score_intervals_per_method():
    """Planted normal scores: the percentile interval of the full-data mean has half-width
    ≈ 1.96 σ/√N for the multinomial bootstrap and, after the √(m/(N − m)) rescaling, for subsamples
    of a fraction f ≠ ½ too; disjoint splits give none."""
    g = mv.Graph(1, 2)
    rng = np.random.default_rng(12)
    sigma, N = 2.0, 400
    s = rng.normal(scale=sigma, size=(N, g.n_edges)).astype(np.float32)
    target = 1.959964 * sigma / np.sqrt(N)
    for method, kw in (("multinomial", {}), ("subsample", {"fraction": 0.2})):
        r = mv.stats.bootstrap(s, 2000, 1, graph=g, key=jax.random.key(3), method=method, **kw)
        half = (r.score_ci_percentile[1] - r.score_ci_percentile[0]) / 2
        np.testing.assert_allclose(half.mean(), target, rtol=0.08)  # 2000 replicates, many edges
        assert np.all(r.score_ci_percentile[0] <= r.full_aggregate) and np.all(
            r.full_aggregate <= r.score_ci_percentile[1]
        )
    assert (
        mv.stats.bootstrap(s, 10, 1, graph=g, key=jax.random.key(3), method="disjoint-splits").score_ci_percentile
        is None
    )


def test_bca_degenerate_cases():
    """θ̂ outside every replicate (z₀ = ±∞): NaN, as scipy; constant replicates: that constant."""
    star = np.random.default_rng(13).normal(size=(200, 2)).astype(np.float32) + [[5.0, 0.0]]
    jack = np.random.default_rng(14).exponential(size=(20, 2)).astype(np.float32)
    ci = np.asarray(mv.stats.bca_interval(star, np.array([0.0, 0.0], np.float32), jack))
    assert np.isnan(ci[:, 0]).all() and np.isfinite(ci[:, 1]).all()
    const = np.full((50, 1), 0.25, np.float32)
    np.testing.assert_array_equal(np.asarray(mv.stats.bca_interval(const, np.array([0.25]), const[:10])), 0.25)


def test_bootstrap_identical_on_one_and_eight_devices(tmp_path):
    g, s = _synthetic(n=50)
    np.save(tmp_path / "s.npy", s)
    script = textwrap.dedent(f"""
        import jax, numpy as np, mivar_jax as mv
        assert jax.device_count() == 8
        s = np.load({str(tmp_path / "s.npy")!r})
        for method in ("multinomial", "disjoint-splits"):
            r = mv.stats.bootstrap(s, 10, 12, graph=mv.Graph(3, 3), key=jax.random.key(7), method=method)
            np.save({str(tmp_path)!r} + f"/{{method}}-agg.npy", r.aggregated)
            np.save({str(tmp_path)!r} + f"/{{method}}-jac.npy", r.jaccard)
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600)
    for method in ("multinomial", "disjoint-splits"):
        r = mv.stats.bootstrap(s, 10, 12, graph=g, key=jax.random.key(7), method=method)
        np.testing.assert_array_equal(np.load(tmp_path / f"{method}-agg.npy"), r.aggregated)
        np.testing.assert_array_equal(np.load(tmp_path / f"{method}-jac.npy"), r.jaccard)


# ----------------------------------------------------------------------------- decomposition


def test_crossed_decomposition_recovers_planted_components():
    rng = np.random.default_rng(7)
    na, nb, nr, items = 12, 10, 4, 200
    planted = {"a": 1.0, "b": 0.5, "a×b": 0.25, "a×b×rep": 2.0}
    y = (
        rng.normal(scale=np.sqrt(planted["a"]), size=(na, 1, 1, items))
        + rng.normal(scale=np.sqrt(planted["b"]), size=(1, nb, 1, items))
        + rng.normal(scale=np.sqrt(planted["a×b"]), size=(na, nb, 1, items))
        + rng.normal(scale=np.sqrt(planted["a×b×rep"]), size=(na, nb, nr, items))
    )
    d = mv.stats.decompose(y, ["a", "b", "rep"])
    got = dict(zip(d.effects, d.raw_components / items, strict=True))
    for effect, value in planted.items():
        assert got[effect] == pytest.approx(value, rel=0.15), effect
    for effect in ("rep", "a×rep", "b×rep"):
        assert abs(got[effect]) < 0.05, effect
    assert d.sum_of_squares.sum() == pytest.approx(d.total_ss, rel=1e-10)  # components of SS sum to the total
    assert d.ss_share.sum() == pytest.approx(1.0) and d.share.sum() == pytest.approx(1.0)
    assert json.dumps(d.to_json())


def test_nested_decomposition_recovers_planted_components():
    rng = np.random.default_rng(8)
    ns, nr, ni, items = 15, 8, 6, 100
    y = (
        rng.normal(scale=1.0, size=(ns, 1, 1, items))
        + rng.normal(scale=np.sqrt(0.5), size=(ns, nr, 1, items))
        + rng.normal(scale=np.sqrt(0.25), size=(ns, nr, ni, items))
    )
    d = mv.stats.decompose(y, ["seed", "replicate", "input"], design="nested")
    assert d.effects == ("seed", "replicate(seed)", "input(replicate)")
    np.testing.assert_allclose(d.raw_components / items, [1.0, 0.5, 0.25], rtol=0.2)
    # law of total variance: the SS terms are the population-variance split of the total
    assert d.sum_of_squares.sum() == pytest.approx(d.total_ss, rel=1e-10)
    total_var = ((y - y.mean((0, 1, 2))) ** 2).mean((0, 1, 2)).sum()
    between_seed = ((y.mean((1, 2)) - y.mean((0, 1, 2))) ** 2).mean(0).sum()
    assert d.sum_of_squares[0] / (ns * nr * ni) == pytest.approx(between_seed)
    assert d.total_ss / (ns * nr * ni) == pytest.approx(total_var)


def test_decomposition_bad_input():
    y = np.zeros((3, 4))
    with pytest.raises(ValueError, match="≥ 2 levels"):
        mv.stats.decompose(np.zeros((1, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="distinct names"):
        mv.stats.decompose(y, ["a", "a"])
    with pytest.raises(ValueError, match="fewer than"):
        mv.stats.decompose(y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown design"):
        mv.stats.decompose(y, ["a", "b"], design="mixed")
    with pytest.raises(ValueError, match="balanced grid"):
        mv.stats.decompose(np.full((3, 4), np.nan), ["a", "b"])


@pytest.mark.parametrize("levels", [(0.025, 0.975), (0.001, 0.999), (0.3, 0.6), (0.025, 0.975, 0.93, 0.04)])
def test_tail_quantiles_equal_numpy(levels):
    from mivar_jax.stats.intervals import column_quantiles_tails

    v = np.random.default_rng(9).normal(size=(500, 40)).astype(np.float32)
    lv = np.broadcast_to(np.asarray(levels, np.float32)[:, None], (len(levels), 40)).copy()
    lv[:2, 3] = [0.0, 1.0]  # the extremes
    got = np.asarray(column_quantiles_tails(jax.numpy.asarray(v), lv))
    expected = np.stack([[np.quantile(v[:, k], lv[i, k]) for k in range(40)] for i in range(len(levels))])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
