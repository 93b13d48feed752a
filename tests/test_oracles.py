"""Oracles written here, independently of the code under test (issue 13, "Tests that can fail").

Nothing below restates the implementation: every expected value comes from a hand-written loop,
a hand-computed number, or JAX autodiff of the graph-form forward through a zero additive tap at
each destination slot (``forward(..., Taps(zeros))``, differentiated with ``jax.grad``; node
interpolation through the mixing mode's edge mask), not from the estimators' own gradient kernels
(``slot_gradients``, ``Replace`` blending). The tiny models are built with JAX and numpy only
(a ``ModelConfig`` and random weights drawn to ``param_shapes``): no torch, no transformers.

- bootstrap: replicate circuits rebuilt one by one (weighted sums, top-n by |score| with ties to
  the lower index, pruning by a reachability loop over the Graph's node names) and counted;
- bootstrap weights read off one-hot scores: exact integer counts, multinomial moments,
  subsample and disjoint-split structure;
- CPR / CMD: trapezoids computed by hand; the curve's circuits rebuilt and re-evaluated;
- EAP-IG on inputs (three α conventions), EAP-IG on activations (both poolings), CEAP and
  clean-corrupted against explicit per-run gradient loops.

Each oracle was checked to discriminate: with a wrong α, normalisation, step weight, tie rule,
pruning rule, key, or expected size written into it, its test fails.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.evaluation import curve_areas
from mivar_jax.models import EdgeMix, Model, ModelConfig, Taps, forward
from mivar_jax.models.config import rope_inv_freq
from mivar_jax.models.params import param_shapes
from mivar_jax.tasks.data import TaskData

# ============================================================================ shared oracles


def _node_of_slot(graph: mv.Graph) -> np.ndarray:
    """[n_dst] node index (sources 0…S-1, ``logits`` = S) of each destination slot, from the names:
    ``a1.h2<k>`` belongs to ``a1.h2``, ``m1`` to ``m1``, ``logits`` to logits."""
    S = graph.n_src
    index = {name: i for i, name in enumerate(graph.src_names)}
    index["logits"] = S
    return np.array([index[name.split("<")[0]] for name in graph.dst_names])


def _prune_loop(graph: mv.Graph, selected: np.ndarray) -> np.ndarray:
    """Keep edge u→v iff u is reachable from ``input`` and v's node reaches ``logits`` along
    selected edges: two fixed-point loops over the selected edges."""
    owner = _node_of_slot(graph)
    S = graph.n_src
    edges = [(int(graph.edge_src[e]), int(owner[graph.edge_dst[e]])) for e in np.nonzero(selected)[0]]
    forward, backward = {0}, {S}
    changed = True
    while changed:
        changed = False
        for u, w in edges:
            if u in forward and w not in forward:
                forward.add(w)
                changed = True
            if w in backward and u not in backward:
                backward.add(u)
                changed = True
    kept = np.zeros(graph.n_edges, bool)
    for e in np.nonzero(selected)[0]:
        kept[e] = int(graph.edge_src[e]) in forward and int(owner[graph.edge_dst[e]]) in backward
    return kept


def _top_n(values: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The n largest |values| (ties → lower index), and how many edges tied with the n-th were left out."""
    magnitude = [abs(v) for v in values.tolist()]
    order = sorted(range(len(magnitude)), key=lambda e: (-magnitude[e], e))
    mask = np.zeros(len(magnitude), bool)
    mask[order[:n]] = True
    nth = magnitude[order[n - 1]]
    left_out_ties = sum(1 for e in order[n:] if magnitude[e] == nth)
    return mask, left_out_ties


def _logit_diff(logits_NxV, correct_NxA, incorrect_NxB):
    """Mean logit of the valid (≥ 0) correct ids minus that of the valid incorrect ids, per input."""

    def mean_of(ids):
        valid = (ids >= 0).astype(jnp.float32)
        picked = jnp.take_along_axis(logits_NxV, jnp.maximum(ids, 0), axis=1)
        return (picked * valid).sum(1) / valid.sum(1)

    return mean_of(correct_NxA) - mean_of(incorrect_NxB)


# ============================================================================ tiny JAX-only models and data


def _config(kind: str) -> ModelConfig:
    if kind == "gpt2":  # LayerNorm, learned positions, GELU (tanh), biases; 3 layers × 3 heads
        return ModelConfig(
            name="oracle-gpt2", family="gpt2", n_layers=3, n_heads=3, n_kv_heads=3, d_model=12, d_head=4,
            d_mlp=24, vocab_size=29, n_ctx=8, qkv_bias=True, o_bias=True, mlp_bias=True, activation="gelu_tanh",
        )  # fmt: skip
    # Llama style: RMSNorm, RoPE, SwiGLU, grouped-query attention (4 query heads on 2 kv heads), untied
    return ModelConfig(
        name="oracle-llama", family="llama", n_layers=2, n_heads=4, n_kv_heads=2, d_model=16, d_head=4,
        d_mlp=20, vocab_size=29, n_ctx=8, norm="rmsnorm", positional="rope", rope_inv_freq=rope_inv_freq(4, 1e4),
        activation="silu", gated_mlp=True, tied_embeddings=False,
    )  # fmt: skip


def _tiny_model(kind: str) -> Model:
    """Random weights N(0, 0.5²) (attention scores and MLP pre-activations of order 1, so the model
    is far from linear), norm scales 1 + N(0, 0.1²), norm biases N(0, 0.1²), to param_shapes."""
    cfg = _config(kind)
    rng = np.random.default_rng(7 if kind == "gpt2" else 11)

    def draw(path, shape):
        name = path[-1].key
        base, sd = (1.0, 0.1) if name == "scale" else (0.0, 0.1 if name == "bias" else 0.5)
        return jnp.asarray(base + sd * rng.normal(size=shape), jnp.float32)

    shapes = param_shapes(cfg)
    params = jax.tree_util.tree_map_with_path(draw, shapes, is_leaf=lambda x: isinstance(x, tuple))
    return Model(cfg, params)


def _tiny_data(vocab: int, seed: int = 0) -> TaskData:
    """Three right-padded pairs (the last one padded by one position) whose corrupted prompts
    first differ at positions 1, 3 and 2; answer sets of one or two tokens."""
    rng = np.random.default_rng(seed)
    N, P = 3, 6
    clean = rng.integers(1, vocab, (N, P)).astype(np.int32)
    corrupted = clean.copy()
    mask = np.ones((N, P), np.int32)
    mask[2, P - 1] = 0
    for n, first in enumerate((1, 3, 2)):
        for p in range(first, int(mask[n].sum())):
            if p == first or rng.random() < 0.6:
                corrupted[n, p] = 1 + (clean[n, p] - 1 + rng.integers(1, vocab - 1)) % (vocab - 1)
    clean[mask == 0] = 0
    corrupted[mask == 0] = 0
    assert ((clean != corrupted).sum(1) > 0).all()
    answers = rng.choice(np.arange(1, vocab), size=(N, 3), replace=False)
    correct = np.stack([answers[:, 0], np.array([answers[0, 1], -1, -1])], 1).astype(np.int32)
    incorrect = answers[:, 2:].astype(np.int32)
    return TaskData(
        task="oracle", metric="logit_diff", counterfactual="x", clean=clean, corrupted=corrupted,
        attention_mask=mask, answer_pos=(mask.sum(1) - 1).astype(np.int32), correct=correct, incorrect=incorrect,
        template=np.zeros(N, np.int32), family=np.zeros(N, np.int32), uid=np.arange(N),
        clean_text=("c0", "c1", "c2"), corrupted_text=("k0", "k1", "k2"),
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=0)
def _tap_gradients(cfg, params, arrays, input_embeds, corrupted, edge_mask):
    """(∂Σ_n metric_n/∂tap_v [T, N, P, D], (node outputs [S, N, P, D], metric [N])) of one run on
    ``arrays``' prompts with input embeddings ``input_embeds``, optionally in mixing mode
    (``corrupted`` + dense ``edge_mask``). Each input's metric depends on its own row only, so the
    gradient of the sum gives every input's own gradient."""
    tokens, mask, answer_pos, correct, incorrect = arrays
    T, (N, P) = cfg.graph.n_dst, tokens.shape

    def total(taps):
        mix = () if corrupted is None else (EdgeMix(edge_mask, corrupted),)
        logits, nodes = forward(
            cfg, params, tokens, mask, (*mix, Taps(taps)), input_embeds=input_embeds, logit_positions=answer_pos,
            nodes=True,
        )  # fmt: skip
        metric = _logit_diff(logits, correct, incorrect)
        return metric.sum(), (nodes, metric)

    return jax.grad(total, has_aux=True)(jnp.zeros((T, N, P, cfg.d_model), jnp.float32))


class Oracle:
    """The runs every gradient oracle needs, on one tiny model and dataset (float64 on the host)."""

    def __init__(self, model: Model, data: TaskData):
        self.model, self.data = model, data
        self.cfg, self.graph = model.config, model.graph
        self.arrays = tuple(
            jnp.asarray(a) for a in (data.clean, data.attention_mask, data.answer_pos, data.correct, data.incorrect)
        )
        # the clean and corrupted inputs x, x̃ (embeddings written out here), and both runs' node outputs
        self.x_clean, self.x_ref = (self._embed(tokens) for tokens in (data.clean, data.corrupted))
        run = functools.partial(_tap_gradients, self.cfg, model.params, self.arrays)
        _, (self.z_clean, self.clean_metric) = run(self.x_clean, None, None)
        _, (self.z_ref, _) = run(self.x_ref, None, None)
        self.delta = np.asarray(self.z_ref, np.float64) - np.asarray(self.z_clean, np.float64)  # Δz = z̃ − z

    def _embed(self, tokens):
        """Token embeddings, plus learned position embeddings at positions counted over real tokens."""
        params, mask = self.model.params, self.data.attention_mask
        x = np.asarray(params["tok_embed"])[tokens]
        if self.cfg.positional == "learned":
            x = x + np.asarray(params["pos_embed"])[np.maximum(np.cumsum(mask, 1) - 1, 0)]
        return jnp.asarray(x, jnp.float32)

    def grads(self, input_embeds=None, corrupted=None, edge_mask=None, with_metric=False):
        x = self.x_clean if input_embeds is None else input_embeds
        g, (nodes, metric) = _tap_gradients(self.cfg, self.model.params, self.arrays, x, corrupted, edge_mask)
        out = np.asarray(g, np.float64), np.asarray(nodes, np.float64)
        return out + (np.asarray(metric, np.float64),) if with_metric else out

    def at(self, x):
        """Slot gradients of the run whose input embeddings are ``x``."""
        return self.grads(input_embeds=jnp.asarray(x, jnp.float32))[0]

    def edges(self, dense_NxSxT):
        return dense_NxSxT[:, self.graph.edge_src, self.graph.edge_dst]

    def product(self, delta_SxNxPxD, grad_TxNxPxD):
        """Per input and edge u→v: Σ over positions and width of Δ_u ⊙ g_v."""
        return self.edges(np.einsum("snpd,tnpd->nst", delta_SxNxPxD, grad_TxNxPxD))

    def groups(self) -> list[list[int]]:
        """Source rows of each interpolation group: the input; each layer's heads; each MLP."""
        H, rows = self.cfg.n_heads, [[0]]
        for layer in range(self.cfg.n_layers):
            first = 1 + layer * (H + 1)
            rows += [list(range(first, first + H)), [first + H]]
        assert sorted(sum(rows, [])) == list(range(self.graph.n_src))
        return rows

    def group_run(self, rows: list[int], alpha: float) -> np.ndarray:
        """Slot gradients of the run whose ``rows`` nodes output z̃ + α (z − z̃) (constants: no
        gradient through their own computation, like the reference's forward hook) while every
        other node is computed normally: mixing mode, every edge out of ``rows`` reading the
        patched value, every other edge this run's own output."""
        S, T = self.graph.n_src, self.graph.n_dst
        values = self.z_ref + alpha * (self.z_clean - self.z_ref)
        patched = self.z_ref.at[jnp.asarray(rows)].set(values[jnp.asarray(rows)])
        mask = np.ones((S, T), np.float32)
        mask[rows] = 0.0
        return self.grads(corrupted=patched, edge_mask=jnp.asarray(mask))[0]


def _attribute(model, data, method, **kw):
    return mv.attribute(model, data, method=method, progress=False, **kw).per_input.astype(np.float64)


def _assert_close(got, expected, what, rel=1e-4):
    """|got − expected| ≤ rel · max |expected| everywhere (float32 scores against a float64 sum of
    float32 gradients: the two differ by float32 rounding of the forward/backward, ~1e-6 of the
    largest score; a wrong α, weight or normalisation moves scores by percents)."""
    assert got.shape == expected.shape, what
    scale = np.abs(expected).max()
    assert scale > 1e-3, f"{what}: the oracle is degenerate (max |score| {scale})"
    err = np.abs(got - expected).max()
    assert err <= rel * scale, f"{what}: max |error| {err:.3g} > {rel} × max |score| {scale:.3g}"


@functools.cache
def _oracle(kind: str) -> Oracle:
    """One Oracle per model kind for the whole module (``gpt2``: GELU, LayerNorm, 3 layers × 3
    heads; ``llama``: SwiGLU, RMSNorm, RoPE, 4 query heads on 2 kv heads)."""
    model = _tiny_model(kind)
    return Oracle(model, _tiny_data(model.config.vocab_size))


@pytest.fixture
def gpt2_oracle():
    return _oracle("gpt2")


# ============================================================================ 1. bootstrap inclusion frequency
# Every bootstrap below runs on one graph with N = 13 inputs and n_edges = 9, all but one with B = 12
# replicates, so that most of the bootstrap's kernels compile once.
BOOT_GRAPH, BOOT_N, BOOT_B, BOOT_TOP = mv.Graph(3, 2), 13, 12, 9


def _one_hot_weights(key, n_replicates=BOOT_B, method="multinomial", aggregation="sum", **kw):
    """Replicate weights [B, N] read off one-hot scores: input n scores 1 on edge 2n + 1 and 0
    elsewhere, so the "sum" aggregate of replicate b on that edge is input n's weight."""
    g, N = BOOT_GRAPH, BOOT_N
    one_hot = np.zeros((N, g.n_edges), np.float32)
    columns = 2 * np.arange(N) + 1
    one_hot[np.arange(N), columns] = 1.0
    r = mv.stats.bootstrap(
        one_hot, n_replicates, BOOT_TOP, graph=g, key=key, method=method, aggregation=aggregation, **kw
    )
    return r.aggregated[:, columns].astype(np.float64)


def _planted_scores(kind: str) -> np.ndarray:
    """[N, E] scores: a few planted edges (some of them only connected through others) with mean
    ±1.5 under N(0, 1.5²) noise; ``integer-ties`` rounds them (exact ties in |Σ w s|, also +k vs −k)."""
    g, rng = BOOT_GRAPH, np.random.default_rng(3)
    planted = ["input->a0.h0<v>", "a0.h0->a1.h1<q>", "a1.h1->logits", "input->m0", "m0->a2.h0<k>",
               "a2.h0->logits", "input->logits", "a0.h1->m1", "m1->logits", "a1.h0->a2.h1<v>"]  # fmt: skip
    signal = np.zeros(g.n_edges)
    signal[[g.edge_index(name) for name in planted]] = rng.choice([-1.5, 1.5], len(planted))
    s = signal + rng.normal(scale=1.5, size=(BOOT_N, g.n_edges))
    return (np.round(s) if kind == "integer-ties" else s).astype(np.float32)


@pytest.mark.parametrize("kind", ["integer-ties", "continuous"])
def test_bootstrap_inclusion_frequency_against_a_replicate_loop(kind):
    g, N, B, n_edges, key = BOOT_GRAPH, BOOT_N, BOOT_B, BOOT_TOP, jax.random.key(5)
    s = _planted_scores(kind)
    counts = _one_hot_weights(key)  # the weights depend on (key, b, N) only, not on the scores
    np.testing.assert_array_equal(counts, np.round(counts))
    counts = np.round(counts).astype(np.int64)

    r = mv.stats.bootstrap(s, B, n_edges, graph=g, key=key, aggregation="mean")
    s64 = s.astype(np.float64)
    circuits, ties = np.zeros((B, g.n_edges), bool), np.zeros(B, np.int64)
    pruning_mattered = 0
    for b in range(B):
        w = counts[b]
        assert w.sum() == N
        if kind == "integer-ties":  # rank exact integer sums (Σ w = N in every replicate)
            total = [int(sum(int(w[n]) * int(s[n, e]) for n in range(N))) for e in range(g.n_edges)]
            value = np.array(total, np.float64) / N
            selected, ties[b] = _top_n(np.array(total, np.int64), n_edges)
        else:
            value = (w[:, None] * s64).sum(0) / w.sum()
            selected, ties[b] = _top_n(value, n_edges)
            ranked = np.sort(np.abs(value))[::-1]
            assert ranked[n_edges - 1] - ranked[n_edges] > 1e-5 * ranked[0]  # no float32-sized near-tie at the cut
        np.testing.assert_allclose(r.aggregated[b], value, rtol=1e-6, atol=1e-6 * np.abs(value).max())
        circuits[b] = _prune_loop(g, selected)
        pruning_mattered += circuits[b].sum() < n_edges
    # the oracle is not trivial: pruning removed edges, frequencies vary, and (integers) ties were cut
    assert pruning_mattered > 0
    frequency = circuits.sum(0) / B
    assert ((frequency > 0) & (frequency < 1)).sum() >= 5
    if kind == "integer-ties":
        assert (ties > 0).sum() >= B // 4
    np.testing.assert_array_equal(r.circuits, circuits)
    np.testing.assert_allclose(r.inclusion_frequency, frequency, atol=1e-7)
    np.testing.assert_array_equal(r.sizes, circuits.sum(1))
    np.testing.assert_array_equal(r.cut_ties, ties)
    full_selected, full_ties = _top_n(s64.sum(0) if kind == "integer-ties" else s64.mean(0), n_edges)
    np.testing.assert_array_equal(r.full_circuit, _prune_loop(g, full_selected))
    assert r.full_cut_ties == full_ties
    # Jaccard of two replicates: |A ∩ B| / |A ∪ B| counted by hand
    for a, b in ((0, 1), (2, 7), (5, 11)):
        inter, union = (circuits[a] & circuits[b]).sum(), (circuits[a] | circuits[b]).sum()
        assert r.jaccard[a, b] == pytest.approx(inter / union if union else 1.0, abs=1e-6)


# ============================================================================ 2. bootstrap weights, read directly


def test_multinomial_weights_are_counts_of_n_draws():
    N, B, key = BOOT_N, 1000, jax.random.key(21)
    counts = _one_hot_weights(key, B)
    # exact non-negative integers summing to N in every replicate
    np.testing.assert_array_equal(counts, np.round(counts))
    assert counts.min() >= 0 and counts.max() <= N
    np.testing.assert_array_equal(counts.sum(1), np.full(B, N))
    # "mean" divides by Σ w = N: the same counts back; replicate b's weights come from (key, b)
    # alone, so the first 12 of B = 1000 replicates are those of a run with B = 12
    means = _one_hot_weights(key, BOOT_B, aggregation="mean")
    np.testing.assert_allclose(means * N, counts[:BOOT_B], atol=1e-5)

    # Multinomial(N, 1/N) with N = 13: each count is Binomial(13, 1/13), mean 1, variance
    # σ² = 1 − 1/N = 0.923. Over B = 1000 replicates: an input's mean count has sd √(σ²/B) = 0.030
    # (bound 0.14, 4.6 sd); its sample variance has sd √((μ₄ − σ⁴)/B) with μ₄ = Npq(1 + 3(N − 2)pq)
    # = 3.086, σ⁴ = 0.852: 0.047 (bound 0.22, 4.7 sd), about 0.013 averaged over the 13 inputs
    # (bound 0.06, 4.6 sd). Poisson(1) counts (variance 1) or draws that skip an input would fail.
    c = counts
    assert np.abs(c.mean(0) - 1).max() < 0.14, c.mean(0)
    variances = c.var(0, ddof=1)
    assert np.abs(variances - (1 - 1 / N)).max() < 0.22, variances
    assert abs(variances.mean() - (1 - 1 / N)) < 0.06, variances.mean()
    # P(an input is never drawn) = (1 − 1/N)^N = 0.3533, over B·N = 13000 counts (sd ≈ 0.0042)
    assert abs((c == 0).mean() - (1 - 1 / N) ** N) < 0.02
    # replicates are independent draws: consecutive replicates' centred counts are uncorrelated
    # (Σ_n (c − 1)(c' − 1) / (N σ²) has sd ≈ √(N σ⁴)/(N σ²) = 0.28 per pair, 0.009 averaged; bound 0.05)
    cross = ((c[1:] - 1) * (c[:-1] - 1)).sum(1).mean() / (N * (1 - 1 / N))
    assert abs(cross) < 0.05, cross


@pytest.mark.parametrize("fraction, size", [(0.35, 4)])  # 0.35 · 13 = 4.55
def test_subsample_weights_are_floor_fraction_n_distinct_inputs(fraction, size):
    N, B = BOOT_N, BOOT_B
    assert size == math.floor(Fraction(str(fraction)) * N)
    w = _one_hot_weights(jax.random.key(3), method="subsample", fraction=fraction)
    assert set(np.unique(w).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(w.sum(1), np.full(B, size))
    assert len({tuple(row) for row in w.astype(int).tolist()}) > B // 2  # fresh subsets (715 possible), not one


def test_disjoint_splits_are_disjoint_parts_of_floor_n_over_b():
    n_replicates = BOOT_B
    w = _one_hot_weights(jax.random.key(8), n_replicates, method="disjoint-splits")
    size = BOOT_N // n_replicates  # ⌊13/12⌋ = 1: twelve distinct inputs, one left over
    assert set(np.unique(w).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(w.sum(1), np.full(n_replicates, size))
    assert w.sum(0).max() == 1  # no input in two parts
    assert w.sum() == size * n_replicates


# ============================================================================ 3. CPR / CMD


def test_curve_areas_by_hand():
    # fractions 0.1, 0.2, 0.5, 1.0 (widths 0.1, 0.3, 0.5); f = 0.5, 1.5, 0.9, 1.0 (crosses 1 twice)
    # CPR = 0.1·(0.5 + 1.5)/2 + 0.3·(1.5 + 0.9)/2 + 0.5·(0.9 + 1.0)/2 = 0.1 + 0.36 + 0.475 = 0.935
    # |1 − f| = 0.5, 0.5, 0.1, 0.0; the trapezoid of |1 − f| at the points (MIB, the docstring):
    # CMD = 0.1·(0.5 + 0.5)/2 + 0.3·(0.5 + 0.1)/2 + 0.5·(0.1 + 0.0)/2 = 0.05 + 0.09 + 0.025 = 0.165
    # (not ∫|1 − f| of the piecewise-linear f, which splits the first interval at f = 1: 0.025 there)
    cpr, cmd = curve_areas([0.1, 0.2, 0.5, 1.0], [0.5, 1.5, 0.9, 1.0])
    assert cpr == pytest.approx(0.935, abs=1e-12)
    assert cmd == pytest.approx(0.165, abs=1e-12)
    # log scale: fractions 0.01, 0.1, 1 are ln 10 apart; f = 0.2, 1.4, 0.8, |1 − f| = 0.8, 0.4, 0.2
    # CPR = ln 10 · ((0.2 + 1.4)/2 + (1.4 + 0.8)/2) = 1.9 ln 10; CMD = ln 10 · (0.6 + 0.3) = 0.9 ln 10
    cpr, cmd = curve_areas([0.01, 0.1, 1.0], [0.2, 1.4, 0.8], log_scale=True)
    assert cpr == pytest.approx(1.9 * math.log(10), abs=1e-12)
    assert cmd == pytest.approx(0.9 * math.log(10), abs=1e-12)
    # three points, f below and above 1: CPR = 0.25·(0 + 2)/2 + 0.5·(2 + 1)/2 = 0.25 + 0.75 = 1.0;
    # CMD = 0.25·(1 + 1)/2 + 0.5·(1 + 0)/2 = 0.25 + 0.25 = 0.5
    cpr, cmd = curve_areas([0.25, 0.5, 1.0], [0.0, 2.0, 1.0])
    assert (cpr, cmd) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.5, abs=1e-12))


def _faithfulness_by_hand(o: Oracle, masks_CxE: np.ndarray) -> np.ndarray:
    """(m̄(C) − m̄(∅)) / (m̄(full) − m̄(∅)) with every non-circuit edge reading the corrupted run's
    node output, over whole prompts (no windows, no caches): one mixing-mode forward per circuit."""

    def metric(edge_mask_E):
        dense = jnp.asarray(o.graph.to_dense(np.asarray(edge_mask_E, np.float32)))
        return o.grads(corrupted=o.z_ref, edge_mask=dense, with_metric=True)[2].mean()

    full, empty = metric(np.ones(o.graph.n_edges)), metric(np.zeros(o.graph.n_edges))
    assert full == pytest.approx(float(np.asarray(o.clean_metric).mean()), rel=1e-5)
    assert abs(full - empty) > 0.05  # the ratio is well conditioned
    return np.array([(metric(m) - empty) / (full - empty) for m in masks_CxE])


@pytest.mark.parametrize("values_kind", ["integer-ties", "per-input-scores"])
def test_evaluate_curve_against_own_circuits_and_trapezoid(gpt2_oracle, values_kind):
    o = gpt2_oracle
    model, data, g = o.model, o.data, o.graph
    fractions = (0.02, 0.1, 0.25, 0.5, 1.0)
    rng = np.random.default_rng(4)
    if values_kind == "integer-ties":  # aggregated [E] values with many ties
        values = rng.integers(-5, 6, g.n_edges).astype(np.float32)
        given = values
    else:  # a Scores object, aggregated by the curve with "mean"
        per_input = rng.normal(size=(len(data), g.n_edges)).astype(np.float32)
        given = mv.Scores(per_input, g, "edge", "synthetic")
        values = per_input.astype(np.float64).mean(0)
    curve = mv.evaluate_curve(model, data, given, fractions, progress=False)
    E = g.n_edges
    n_requested = [math.floor(Fraction(str(f)) * E) for f in fractions]
    np.testing.assert_array_equal(curve.n_requested, n_requested)
    masks = np.stack([_prune_loop(g, _top_n(values, n)[0]) if n else np.zeros(E, bool) for n in n_requested])
    np.testing.assert_array_equal(curve.n_edges, masks.sum(1))
    assert len(set(masks.sum(1).tolist())) >= 3  # distinct circuits along the curve
    direct = mv.evaluate(model, data, masks, progress=False)
    np.testing.assert_allclose(curve.faithfulness, direct.faithfulness, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curve.faithfulness, _faithfulness_by_hand(o, masks), rtol=1e-3, atol=1e-4)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)  # every edge: the clean model
    # the areas: trapezoids over the returned points, written out
    x, f = list(curve.fractions), [float(v) for v in curve.faithfulness]
    cpr = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    cmd = sum((x[i + 1] - x[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(len(x) - 1))
    assert curve.cpr == pytest.approx(cpr, rel=1e-9, abs=1e-12)
    assert curve.cmd == pytest.approx(cmd, rel=1e-9, abs=1e-12)
    if values_kind == "integer-ties":
        log_curve = mv.evaluate_curve(model, data, given, fractions, log_scale=True, progress=False)
        lx = [math.log(v) for v in x]
        log_cmd = sum((lx[i + 1] - lx[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(len(x) - 1))
        assert log_curve.cmd == pytest.approx(log_cmd, rel=1e-6)


# ============================================================================ 4. EAP-IG on inputs (m = 2)


# Each (model, option) pair below compiles one estimator kernel (the bulk of this file's time), so
# the options are spread over the two models rather than crossed with them.
@pytest.mark.parametrize("kind, convention", [("gpt2", "reference"), ("llama", "right"), ("gpt2", "midpoint")])
def test_eap_ig_inputs_two_steps_against_explicit_points(kind, convention):
    """m = 2: score = Σ_{p,d} Δz_u · ½ (g_v(x̃ + α₁(x − x̃)) + g_v(x̃ + α₂(x − x̃))) with
    (α₁, α₂) = (0, ½) reference, (½, 1) right, (¼, ¾) midpoint."""
    o = _oracle(kind)
    x, x_ref = np.asarray(o.x_clean, np.float64), np.asarray(o.x_ref, np.float64)
    a1, a2 = {"reference": (0.0, 0.5), "right": (0.5, 1.0), "midpoint": (0.25, 0.75)}[convention]
    g1 = o.at(x_ref + a1 * (x - x_ref))
    g2 = o.at(x_ref + a2 * (x - x_ref))
    expected = o.product(o.delta, 0.5 * (g1 + g2))
    got = _attribute(o.model, o.data, "eap-ig-inputs", steps=2, ig_convention=convention)
    _assert_close(got, expected, f"eap-ig-inputs/{convention}")


# ============================================================================ 5. the other gradient estimators


@pytest.mark.parametrize("kind, pooling", [("gpt2", "reference"), ("llama", "reference"), ("gpt2", "source")])
def test_eap_ig_activations_against_a_loop_over_groups_and_steps(kind, pooling):
    """One run per group (the input; each layer's heads; each MLP) and step α = k/m, k = 1…m, its
    nodes fixed to z̃ + α (z − z̃). ``reference`` (EAP-IG's get_scores_ig_activations: every
    run's backward hooks add into every edge, then scores / total_steps with total_steps =
    m · (1 + 2L)): Δz_u · Σ_runs g_v / (m · n_groups). ``source``: edge u→v takes only the m runs
    of u's own group, Δz_u · Σ_k g_v / m."""
    o, m = _oracle(kind), 2
    groups = o.groups()
    assert len(groups) == 1 + 2 * o.cfg.n_layers
    per_group = {}
    for i, rows in enumerate(groups):
        per_group[i] = sum(o.group_run(rows, k / m) for k in range(1, m + 1))
    if pooling == "reference":
        pooled = sum(per_group.values()) / (m * len(groups))
        expected = o.product(o.delta, pooled)
    else:
        expected = np.zeros((len(o.data), o.graph.n_edges))
        for i, rows in enumerate(groups):
            only = np.zeros_like(o.delta)
            only[rows] = o.delta[rows]
            expected += o.product(only, per_group[i] / m)
    got = _attribute(o.model, o.data, "eap-ig-activations", steps=m, pooling=pooling)
    _assert_close(got, expected, f"eap-ig-activations/{pooling}")


@pytest.mark.parametrize("kind", ["llama"])
def test_ceap_three_steps_against_a_loop(kind):
    """x_k = x + (k/3)(x̃ − x), k = 0…3; score = Σ_{k<3} Σ_{p,d} (z_u^(k+1) − z_u^(k)) · g_v(x_k)."""
    o, m = _oracle(kind), 3
    x, x_ref = np.asarray(o.x_clean, np.float64), np.asarray(o.x_ref, np.float64)
    runs = [o.grads(input_embeds=jnp.asarray(x + (k / m) * (x_ref - x), jnp.float32)) for k in range(m + 1)]
    expected = sum(o.product(runs[k + 1][1] - runs[k][1], runs[k][0]) for k in range(m))
    z_ref = np.asarray(o.z_ref, np.float64)
    np.testing.assert_allclose(runs[m][1], z_ref, atol=1e-6 * np.abs(z_ref).max())  # the path ends at x̃'s run
    got = _attribute(o.model, o.data, "ceap", steps=m)
    _assert_close(got, expected, "ceap")


@pytest.mark.parametrize("kind, method", [("gpt2", "clean-corrupted")])
def test_clean_corrupted_against_two_runs(kind, method):
    """clean-corrupted: Δz_u · ½ (g_v(x) + g_v(x̃)) (eap, not run here: Δz_u · g_v(x))."""
    o = _oracle(kind)
    g_clean = o.at(o.x_clean)
    g = 0.5 * (g_clean + o.at(o.x_ref)) if method == "clean-corrupted" else g_clean
    got = _attribute(o.model, o.data, method)
    _assert_close(got, o.product(o.delta, g), method)
