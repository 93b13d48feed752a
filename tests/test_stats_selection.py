"""Margins to the cut, prompts needed and CPR/CMD intervals, on planted data with known answers."""

import jax
import numpy as np
import pytest
import scipy.stats

import mivar_jax as mv
from mivar_jax.circuits.selection import topn
from mivar_jax.evaluation import CircuitEvaluation, CurveResult, curve_areas


def _planted(means, n, sd, seed=0):
    rng = np.random.default_rng(seed)
    means = np.asarray(means, np.float64)
    return (means + rng.normal(scale=sd, size=(n, means.size))).astype(np.float32)


def test_a_tie_at_the_cut_with_no_noise_is_all_selection():
    """Identical inputs: no score varies; two edges tie for the 5th place. The tie-break picks the
    same edge in every replicate (observed Jaccard 1), the margins say a coin flip: implied Jaccard
    (4 + 2·¼) / (4 + 2·¾) = 9/11."""
    g = mv.Graph(1, 1)  # 8 edges
    s = np.tile(np.array([10, 9, 8, 7, 5, 5, 1, 0.5], np.float32), (30, 1))
    b = mv.stats.bootstrap(s, 100, 5, graph=g, key=jax.random.key(0))
    sel = mv.stats.selection_noise(b)
    assert sel.cut == pytest.approx(5.0) and sel.cut == b.full_aggregate[4] and sel.relative_se == 0.0
    np.testing.assert_array_equal(sel.margin, [np.inf] * 4 + [0, 0] + [-np.inf] * 2)
    np.testing.assert_array_equal(sel.implied_inclusion, [1, 1, 1, 1, 0.5, 0.5, 0, 0])
    assert sel.implied_jaccard == pytest.approx(9 / 11) and sel.observed_jaccard == 1.0
    assert sel.n_contested == 2 and np.isnan(sel.contested_share)  # no edge ever changes side
    assert b.full_cut_ties == 1


def test_noisy_scores_far_from_the_cut_leave_the_circuit_stable():
    """Per-input noise of sd 2 around means 10 (five edges) and 0 (three): the scores vary, the
    margins are ~40 standard errors, nothing flips."""
    g = mv.Graph(1, 1)
    s = _planted([10] * 5 + [0] * 3, 100, 2.0)
    sel = mv.stats.selection_noise(mv.stats.bootstrap(s, 200, 5, graph=g, key=jax.random.key(1)))
    assert sel.relative_se == pytest.approx(0.2 / 10, rel=0.25)  # σ/√N over the mean
    assert sel.n_contested == 0 and np.all(np.abs(sel.margin) > 10)
    assert sel.implied_jaccard > 1 - 1e-9 and sel.observed_jaccard == 1.0


def test_precise_scores_crowded_at_the_cut_make_it_unstable():
    """Four edges far above, six edges sharing mean 5 for two places, with precise scores (0.4% SE):
    the circuit moves although the scores barely do; nearly all the disagreement is at the cut,
    and the margins' Jaccard is close to the observed one."""
    g = mv.Graph(2, 1)
    E = g.n_edges
    means = np.zeros(E)
    means[:4], means[4:10] = 10.0, 5.0
    s = _planted(means, 400, 0.4, seed=2)
    b = mv.stats.bootstrap(s, 300, 6, graph=g, key=jax.random.key(2))
    sel = mv.stats.selection_noise(b)
    assert sel.relative_se < 0.01 and sel.score_correlation > 0.999
    assert sel.observed_jaccard < 0.9 and sel.contested_share > 0.9
    assert sel.implied_jaccard == pytest.approx(sel.observed_jaccard, abs=0.06)
    # the observed inclusion of the crowded edges follows their margins
    crowd = slice(4, 10)
    assert np.corrcoef(sel.margin[crowd], sel.observed_inclusion[crowd])[0, 1] > 0.9
    masks = np.asarray(topn(b.aggregated, 6)[0])
    np.testing.assert_array_equal(sel.observed_inclusion, masks.mean(0))


def test_m_out_of_n_replicates_average_m_draws():
    """The m-out-of-N bootstrap's mean over m draws has standard error σ/√m (σ of the N scores)."""
    g = mv.Graph(1, 1)
    s = _planted(np.zeros(g.n_edges), 200, 1.0, seed=3)
    for m in (50, 800):
        b = mv.stats.bootstrap(s, 2000, 1, graph=g, key=jax.random.key(m), n_draws=m)
        se = b.aggregated.std(0, ddof=1)
        np.testing.assert_allclose(se, s.std(0, ddof=1) / np.sqrt(m), rtol=0.08)
        assert b.n_draws == m and b.score_ci_percentile is None and f"{m} draws from 200 inputs" in b.verdict
        np.testing.assert_array_equal(b.full_aggregate, np.asarray(mv.aggregate(s)))  # the data's, whatever m


def _true_curve(graph, means, sd, n_edges, sizes, pairs=300, seed=9):
    """J(m) of fresh datasets of m prompts from the planted population (simulation)."""
    rng = np.random.default_rng(seed)
    out = []
    for m in sizes:
        agg = means + rng.normal(scale=sd / np.sqrt(m), size=(2 * pairs, means.size))  # a mean of m normals
        kept = np.asarray(mv.circuits.prune(graph, np.asarray(topn(agg, n_edges)[0]))[0])
        a, c = kept[:pairs], kept[pairs:]
        inter, union = (a & c).sum(1), (a | c).sum(1)
        out.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())
    return np.array(out)


def test_prompts_needed_recovers_the_planted_populations_curve():
    """A population whose circuit needs ~160 prompts, sampled five times with 100 prompts each:
    the plug-in curve follows the true one (simulated from the population) and the estimate of the
    prompts needed, extrapolated past the data, lands within a factor 2 of the truth (median within
    1.3: the plug-in's accuracy at 100 prompts, stated in docs/statistics.md). Base edges (into the logits, and from the input into every node) keep every node
    alive, so pruning does not hide the competition among the other edges at the cut."""
    g = mv.Graph(2, 2)
    names = g.edge_names
    base = [i for i, n in enumerate(names) if n.endswith("->logits")]
    base += [g.edge_index(f"input->{d}") for d in ("a0.h0<q>", "a0.h1<q>", "m0", "a1.h0<q>", "a1.h1<q>", "m1")]
    rivals = [i for i, n in enumerate(names) if i not in base and not n.startswith("input->")][:16]
    rng = np.random.default_rng(4)
    mag = np.zeros(g.n_edges)
    mag[base], mag[rivals] = 6.0, np.linspace(3.5, 1.5, 16)  # the cut falls among the rivals
    means = mag * rng.choice([-1, 1], g.n_edges)
    sd, n_edges, N = 8.0, len(base) + 8, 100
    sizes = np.array([25, 50, 100, 200, 400, 800, 1600])
    truth = _true_curve(g, means, sd, n_edges, sizes)
    true_n = mv.stats.prompts.crossing(sizes, truth, 0.8)
    assert N < true_n < 2 * N
    ratios = []
    for seed in range(5):
        s = _planted(means, N, sd, seed=10 + seed)
        got = mv.stats.prompts_needed(s, n_edges, graph=g, key=jax.random.key(seed), sizes=sizes, n_replicates=150)
        np.testing.assert_allclose(got.mean_jaccard, truth, atol=0.08)
        assert got.n_needed_low <= got.n_needed <= got.n_needed_high
        assert f"about {got.n_needed:.0f} prompts" in got.reading
        ratios.append(got.n_needed / true_n)
    assert np.all(np.abs(np.log(ratios)) < np.log(2.0)), ratios
    assert abs(np.log(np.median(ratios))) < np.log(1.3), ratios


def test_crossing_reads_the_last_upward_crossing():
    sizes = np.array([10, 20, 40, 80])
    assert mv.stats.prompts.crossing(sizes, np.array([0.5, 0.7, 0.9, 0.95]), 0.8) == pytest.approx(
        np.exp(np.log(20) + 0.5 * np.log(2))
    )
    assert mv.stats.prompts.crossing(sizes, np.array([0.85, 0.7, 0.9, 0.95]), 0.8) == pytest.approx(
        np.exp(np.log(20) + 0.5 * np.log(2))
    )  # a dip below the bar counts: the estimate is where it reaches the bar for good
    assert mv.stats.prompts.crossing(sizes, np.array([0.9, 0.9, 0.9, 0.9]), 0.8) == 10
    assert mv.stats.prompts.crossing(sizes, np.array([0.1, 0.2, 0.3, 0.79]), 0.8) is None


def _curve(seed=0, N=40, shift=0.0):
    """A synthetic faithfulness curve: per-input metrics of 5 circuits rising to the full model's."""
    rng = np.random.default_rng(seed)
    fractions = np.array([0.01, 0.05, 0.1, 0.5, 1.0])
    full = rng.normal(3.0, 1.0, N)
    empty = rng.normal(0.0, 1.0, N)
    level = np.array([0.1, 0.3 + shift, 0.5, 0.8, 1.0])[:, None]
    metric = empty + level * (full - empty) + rng.normal(0, 0.5, (5, N))
    ev = CircuitEvaluation(
        metric=metric, full_metric=full, empty_metric=empty, agree_task=np.ones((5, N), bool),
        agree_vocab=np.ones((5, N), bool), kl=np.zeros((5, N)), n_edges=np.arange(5),
    )  # fmt: skip
    faith = np.asarray(ev.faithfulness)
    cpr, cmd = curve_areas(fractions, faith)
    return CurveResult(fractions, np.arange(5), np.arange(5), faith, cpr, cmd, ev), (metric, full, empty, fractions)


def test_cpr_cmd_intervals_match_scipys_bootstrap():
    curve, (metric, full, empty, fractions) = _curve()

    def areas(*cols, axis=-1):  # MIB's trapezoidal areas, written out for scipy's resamples [..., N]
        m, full, empty = np.stack(cols[:5]), cols[5], cols[6]
        faith = np.moveaxis((m.mean(-1) - empty.mean(-1)) / (full.mean(-1) - empty.mean(-1)), 0, -1)  # [..., 5]
        dx = np.diff(fractions)
        trapezoid = lambda y: (dx * (y[..., :-1] + y[..., 1:]) / 2).sum(-1)
        return np.stack([trapezoid(faith), trapezoid(np.abs(1 - faith))])

    got = mv.stats.curve_intervals(curve, key=jax.random.key(0), n_resamples=4000)
    assert got.value == pytest.approx([curve.cpr, curve.cmd])
    for method, ours in (("percentile", got.percentile), ("BCa", got.bca)):
        ref = scipy.stats.bootstrap(
            (*metric, full, empty), areas, paired=True, vectorized=True, n_resamples=4000, method=method, rng=1
        )
        low, high = np.asarray(ref.confidence_interval.low), np.asarray(ref.confidence_interval.high)
        width = high - low
        np.testing.assert_allclose(ours[0], low, atol=0.1 * width.max())  # Monte-Carlo error of two draws
        np.testing.assert_allclose(ours[1], high, atol=0.1 * width.max())


def test_paired_difference_of_two_curves():
    curve, _ = _curve()
    same = mv.stats.curve_intervals(curve, other=curve, key=jax.random.key(1), n_resamples=500)
    assert same.names == ("cpr", "cmd", "cpr_difference", "cmd_difference")
    np.testing.assert_array_equal(same.percentile[:, 2:], 0.0)
    better, _ = _curve(shift=0.3)  # the same inputs, a circuit that recovers more at 5% of the edges
    diff = mv.stats.curve_intervals(better, other=curve, key=jax.random.key(1), n_resamples=2000)
    assert diff.value[2] == pytest.approx(better.cpr - curve.cpr)
    assert diff.percentile[0, 2] > 0  # the interval of the difference excludes 0
    with pytest.raises(ValueError, match="same inputs"):
        mv.stats.curve_intervals(curve, other=_curve(seed=1)[0], key=jax.random.key(0))
    with pytest.raises(ValueError, match="log_scale"):
        mv.stats.curve_intervals(curve, key=jax.random.key(0), log_scale=True)


def test_stability_at_fixed_faithfulness_on_a_planted_table():
    """Replicates reach f = 0.5 at known grid sizes; the chosen circuits, their sizes and their
    pairwise Jaccard follow from the table (brute force)."""
    rng = np.random.default_rng(6)
    B, S, E = 12, 4, 60
    grid = np.array([5, 10, 20, 40])
    circuits = np.zeros((B, S, E), bool)
    for b in range(B):
        order = np.concatenate([np.arange(4), 4 + rng.permutation(E - 4)])  # 4 edges shared by all
        for s, n in enumerate(grid):
            circuits[b, s, order[:n]] = True
    first = rng.integers(0, S, B)
    first[:2] = -1  # two replicates never reach the target
    faith = np.where(np.arange(S)[None] >= np.where(first < 0, S, first)[:, None], 0.7, 0.2)
    got = mv.stats.faithful_stability(circuits, faith, grid, 0.5, key=jax.random.key(0))
    np.testing.assert_array_equal(got.chosen, first)
    ok = first >= 0
    np.testing.assert_array_equal(got.sizes[ok], grid[first[ok]])
    assert got.n_reached == B - 2 and got.size_median == np.median(grid[first[ok]])
    picked = circuits[np.arange(B), np.maximum(first, 0)][ok]
    pairs = [
        (picked[a] & picked[b]).sum() / (picked[a] | picked[b]).sum()
        for a in range(len(picked))
        for b in range(len(picked))
        if a != b
    ]
    assert got.mean_jaccard == pytest.approx(np.mean(pairs), rel=1e-5)
    assert got.jaccard_mc[0] <= got.mean_jaccard <= got.jaccard_mc[1]
    np.testing.assert_allclose(got.frontier_faithfulness, faith.mean(0))
    for s in range(S):
        c = circuits[:, s]
        j = [(c[a] & c[b]).sum() / (c[a] | c[b]).sum() for a in range(B) for b in range(B) if a != b]
        assert got.frontier_jaccard[s] == pytest.approx(np.mean(j), rel=1e-5)
    assert "faithfulness 0.5" in got.reading


def test_identical_replicates_are_perfectly_stable_at_any_faithfulness():
    circuits = np.zeros((5, 3, 30), bool)
    for s, n in enumerate((3, 6, 9)):
        circuits[:, s, :n] = True
    faith = np.tile([0.3, 0.6, 0.9], (5, 1))
    for target, size in ((0.5, 6), (0.85, 9)):
        got = mv.stats.faithful_stability(circuits, faith, np.array([3, 6, 9]), target, key=jax.random.key(0))
        assert got.mean_jaccard == 1.0 and got.size_median == size and got.n_reached == 5
    none = mv.stats.faithful_stability(circuits, faith, np.array([3, 6, 9]), 0.95, key=jax.random.key(0))
    assert none.n_reached == 0 and none.mean_jaccard is None and "no stability" in none.reading
