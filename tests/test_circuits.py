"""Circuits: selection, pruning (property tests against a naive fixed-point oracle), files,
drawing, and evaluation against plain forwards and a numpy graph forward."""

import dataclasses
import json

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

import mivar_jax as mv
from mivar_jax.circuits.pruning import slot_owner
from mivar_jax.circuits.selection import topn
from mivar_jax.patching import windows
from tests import reference

# ----------------------------------------------------------------------------- pruning


def _naive_prune(graph, mask):
    """Delete edges touching a dangling node (no in-edge for a non-input node, no out-edge for a
    non-logits node), over and over, until nothing changes."""
    mask = mask.copy()
    owner = slot_owner(graph)
    src, node = graph.edge_src, owner[graph.edge_dst]
    S = graph.n_src
    while True:
        has_in = np.zeros(S + 1, bool)
        has_out = np.zeros(S + 1, bool)
        has_in[node[mask]] = True
        has_out[src[mask]] = True
        has_in[0] = has_out[S] = True
        keep = mask & has_in[src] & has_out[node]
        if (keep == mask).all():
            return mask
        mask = keep


def _connected(graph, mask):
    """Every kept edge lies on an input→logits path (checked by explicit path search)."""
    owner = slot_owner(graph)
    src, node = graph.edge_src[mask], owner[graph.edge_dst[mask]]
    fwd, bwd = {0}, {graph.n_src}
    for _ in range(2 * graph.n_layers + 2):
        fwd |= {int(n) for s, n in zip(src, node, strict=True) if s in fwd}
        bwd |= {int(s) for s, n in zip(src, node, strict=True) if n in bwd}
    return all(int(s) in fwd and int(n) in bwd for s, n in zip(src, node, strict=True))


@st.composite
def graph_and_masks(draw):
    g = mv.Graph(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    density = draw(st.sampled_from([0.05, 0.15, 0.4, 0.8]))
    seed = draw(st.integers(0, 2**31 - 1))
    masks = np.random.default_rng(seed).random((4, g.n_edges)) < density
    return g, masks


@settings(max_examples=60, deadline=None)
@given(graph_and_masks())
def test_pruning_properties(case):
    g, masks = case
    kept, nodes = mv.circuits.prune(g, masks)
    kept, nodes = np.asarray(kept), np.asarray(nodes)
    for mask, k, n in zip(masks, kept, nodes, strict=True):
        np.testing.assert_array_equal(k, _naive_prune(g, mask))  # the fixed point of deleting dangling nodes
        assert not (k & ~mask).any()  # ⊆ input
        assert _connected(g, k)  # no dangling nodes
        np.testing.assert_array_equal(np.asarray(mv.circuits.prune(g, k)[0]), k)  # idempotent
        c = mv.Circuit(g, k)
        np.testing.assert_array_equal(n, c.nodes)
        assert c.n_edges == 0 or (c.nodes[0] and c.nodes[-1])  # connected to both ends, or empty


# ----------------------------------------------------------------------------- selection


def test_topn_picks_n_edges_and_breaks_ties_by_index():
    g = mv.Graph(2, 2)
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=g.n_edges), 1).astype(np.float32)  # many ties
    values[[3, 9, 20]] = [2.5, -2.5, 2.5]  # a three-way tie in |score|
    for n in (1, 2, 3, 7, g.n_edges):
        c = mv.circuits.select(values, n, graph=g, prune_circuit=False)
        expected = np.lexsort((np.arange(g.n_edges), -np.abs(values)))[:n]
        assert c.n_selected == n == c.n_edges
        np.testing.assert_array_equal(np.nonzero(c.edges)[0], np.sort(expected))
    assert mv.circuits.select(values, 2, graph=g, prune_circuit=False).edge_names == [
        g.edge_names[3], g.edge_names[9]
    ]  # fmt: skip
    signed = mv.circuits.select(values, 2, graph=g, absolute=False, prune_circuit=False)
    assert set(np.nonzero(signed.edges)[0]) == {3, 20}
    pruned = mv.circuits.select(values, 7, graph=g)
    assert pruned.n_selected == 7 and pruned.n_edges <= 7
    np.testing.assert_array_equal(
        pruned.edges, _naive_prune(g, mv.circuits.select(values, 7, graph=g, prune_circuit=False).edges)
    )


def test_one_edge_order_for_topn_bootstrap_and_minimal_connected():
    g = mv.Graph(2, 2)
    values = np.round(np.random.default_rng(5).normal(size=g.n_edges), 1).astype(np.float32)  # many ties
    values[[3, 9, 20, 31]] = [2.5, -2.5, 2.5, 2.5]  # planted ties, in |score| and in score
    values[[4, 11]] = [0.0, -0.0]  # a signed-zero tie
    values[[0, 7, 40]] = np.nan  # unscored: last
    for absolute in (True, False):
        rank = np.abs(values) if absolute else values.copy()
        rank[np.isnan(rank)] = -np.inf
        expected = np.lexsort((np.arange(g.n_edges), -rank))  # best first, ties → lower index
        order = np.asarray(mv.circuits.edge_order(values, absolute))
        np.testing.assert_array_equal(order, expected)
        np.testing.assert_array_equal(np.asarray(mv.circuits.edge_order(values, absolute, n=7)), expected[:7])
        stacked = np.asarray(mv.circuits.edge_order(np.stack([values, values[::-1]]), absolute))
        np.testing.assert_array_equal(stacked[0], expected)
        for n in (1, 3, 4, 17, g.n_edges - 3):  # selection and the bootstrap: the n first of the order
            c = mv.circuits.select(values, n, graph=g, absolute=absolute, prune_circuit=False)
            np.testing.assert_array_equal(np.nonzero(c.edges)[0], np.sort(order[:n]))
            top, ties = topn(values[None], n, absolute)
            np.testing.assert_array_equal(np.asarray(top)[0], c.edges)
            nth = rank[order[n - 1]]
            assert int(ties[0]) == int((rank[order[n:]] == nth).sum())
        # minimal_connected: the smallest n of that order whose pruned top-n circuit is connected
        scored = int(np.isfinite(values).sum())
        brute = next(
            (k for k in range(1, scored + 1) if mv.circuits.select(values, k, graph=g, absolute=absolute).n_edges), 0
        )
        assert mv.circuits.minimal_connected(values, graph=g, absolute=absolute) == brute


def test_threshold_and_nan_scores():
    g = mv.Graph(2, 2)
    values = np.random.default_rng(1).normal(size=g.n_edges).astype(np.float32)
    c = mv.circuits.select(values, threshold=1.0, graph=g, prune_circuit=False)
    np.testing.assert_array_equal(c.edges, np.abs(values) >= 1.0)
    values[:5] = np.nan  # unscored edges are never selected
    c = mv.circuits.select(values, g.n_edges - 5, graph=g, prune_circuit=False)
    assert not c.edges[:5].any() and c.edges[5:].all()
    with pytest.raises(ValueError, match=r"n_edges must be an integer in \[1, "):
        mv.circuits.select(values, g.n_edges - 4, graph=g)


def test_greedy_grows_from_the_logits():
    g = mv.Graph(1, 1)  # nodes: input, a0.h0, m0, logits
    values = np.zeros(g.n_edges, np.float32)
    score = {"input->a0.h0<q>": 9.0, "a0.h0->logits": 1.0, "m0->logits": 3.0, "input->m0": 2.0, "a0.h0->m0": 0.5}
    for name, s in score.items():
        values[g.edge_index(name)] = s
    c = mv.circuits.select(values, 1, graph=g, method="greedy", prune_circuit=False)
    assert c.edge_names == ["m0->logits"]  # input->a0.h0<q> scores higher but a0.h0 is not in yet
    c = mv.circuits.select(values, 3, graph=g, method="greedy", prune_circuit=False)
    assert set(c.edge_names) == {"m0->logits", "input->m0", "a0.h0->logits"}
    c = mv.circuits.select(values, 4, graph=g, method="greedy", prune_circuit=False)
    assert "input->a0.h0<q>" in c.edge_names  # a0.h0 entered, so its inputs became candidates


def test_minimal_connected_equals_the_smallest_connected_topn():
    rng = np.random.default_rng(2)
    for layers, heads in [(1, 1), (2, 2), (3, 2)]:
        g = mv.Graph(layers, heads)
        for _ in range(5):
            values = rng.normal(size=g.n_edges).astype(np.float32)
            values[rng.random(g.n_edges) < 0.3] = np.nan
            n = mv.circuits.minimal_connected(values, graph=g)
            scored = int(np.isfinite(values).sum())
            brute = next((k for k in range(1, scored + 1) if mv.circuits.select(values, k, graph=g).n_edges), 0)
            assert n == brute


def test_select_from_scores_and_bad_input():
    g = mv.Graph(2, 2)
    per_input = np.random.default_rng(3).normal(size=(6, g.n_edges)).astype(np.float32)
    scores = mv.Scores(per_input, g, "edge", "eap")
    for how in ("mean", "median", "mean-abs"):
        a = mv.circuits.select(scores, 5, aggregation=how)
        b = mv.circuits.select(mv.aggregate(scores, how), 5, graph=g)
        np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_allclose(mv.aggregate(scores, "median"), np.median(per_input, 0), rtol=1e-6)
    for bad in (0, -1, g.n_edges + 1, 2.5, True):
        with pytest.raises(ValueError, match="n_edges must be an integer"):
            mv.circuits.select(scores, bad)
    with pytest.raises(ValueError, match="unknown selection method"):
        mv.circuits.select(scores, 3, method="best")
    with pytest.raises(ValueError, match="takes threshold"):
        mv.circuits.select(scores, 3, method="threshold")
    with pytest.raises(ValueError, match="edge-level"):
        mv.circuits.select(mv.Scores(per_input[:, : g.n_src], g, "node", "exact"), 3)
    with pytest.raises(ValueError, match="scores are for"):
        mv.circuits.select(scores, 3, graph=mv.Graph(3, 2))
    with pytest.raises(ValueError, match="pass graph="):
        mv.circuits.select(per_input[0], 3)
    with pytest.raises(ValueError, match="different graphs"):
        mv.circuits.select(scores, 3).jaccard(mv.Circuit(mv.Graph(3, 2), np.zeros(mv.Graph(3, 2).n_edges, bool)))
    with pytest.raises(ValueError, match="non-empty"):
        mv.aggregate(per_input[:0])


# ----------------------------------------------------------------------------- files and drawing


def test_graph_json_round_trip_mib_and_drawing(tmp_path):
    g = mv.Graph(2, 3)
    values = np.random.default_rng(4).normal(size=g.n_edges).astype(np.float32)
    c = mv.circuits.select(values, 12, graph=g)
    path = tmp_path / "c.json"
    c.to_graph_json(path)
    raw = json.loads(path.read_text())  # the reference format's field names
    assert set(raw) >= {"nodes", "edges"} and raw["nodes"]["logits"]["in_graph"]
    name = c.edge_names[0]
    assert raw["edges"][name]["in_graph"] is True
    assert raw["edges"][name]["score"] == pytest.approx(float(values[g.edge_index(name)]))
    assert sum(e["in_graph"] for e in raw["edges"].values()) == c.n_edges
    assert [n for n, v in raw["nodes"].items() if v["in_graph"]] == c.node_names
    back = mv.Circuit.from_graph_json(path)
    np.testing.assert_array_equal(back.edges, c.edges)
    np.testing.assert_array_equal(back.scores, c.scores)
    assert back.jaccard(c) == 1.0 and back.jaccard(c, nodes=True) == 1.0

    mib = c.to_mib(tmp_path / "submission", task="ioi", model="gpt2", name="0.001")
    assert mib.endswith("submission/ioi_gpt2/0.001.json")
    np.testing.assert_array_equal(mv.Circuit.from_graph_json(mib).edges, c.edges)

    dot = c.to_dot()
    assert dot.startswith("digraph") and dot.count("->") == c.n_edges
    freq = np.linspace(0, 1, g.n_edges)
    assert "penwidth" in c.to_dot(color_by="frequency", frequency=freq)
    png = c.render(tmp_path / "c.png", color_by="frequency", frequency=freq)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="needs frequency"):
        c.to_dot(color_by="frequency")
    with pytest.raises(ValueError, match="unknown color_by"):
        c.to_dot(color_by="size")
    with pytest.raises(ValueError, match="edge mask must have shape"):
        mv.Circuit(g, np.ones(3, bool))


def test_curve_areas_by_hand():
    cpr, cmd = mv.evaluation.curve_areas([0.25, 0.5, 1.0], [0.2, 0.6, 1.0])
    assert cpr == pytest.approx(0.25 * 0.4 + 0.5 * 0.8)
    assert cmd == pytest.approx(0.25 * (0.8 + 0.4) / 2 + 0.5 * (0.4 + 0.0) / 2)
    cpr_log, _ = mv.evaluation.curve_areas([0.25, 0.5, 1.0], [1.0, 1.0, 1.0], log_scale=True)
    assert cpr_log == pytest.approx(np.log(4))
    with pytest.raises(ValueError, match="at least two"):
        mv.evaluation.curve_areas([0.5], [1.0])


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def tiny(hf_dirs):
    model = mv.load_model(hf_dirs["gpt2"][0])
    return model, mv.tasks.make("ioi", model, n=5, seed=1)


def test_full_and_empty_circuits(tiny):
    model, data = tiny
    g = model.graph
    masks = np.stack([np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)])
    ev = mv.evaluate(model, data, masks, batch_size=2, progress=False)
    base = mv.tasks.evaluate_model(model, data)  # plain forwards: an independent code path
    np.testing.assert_allclose(ev.full_metric, base.clean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.empty_metric, base.corrupted, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.metric[0], base.clean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.metric[1], base.corrupted, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev.faithfulness, [1.0, 0.0], atol=1e-4)
    assert ev.circuit_error("task")[0] == 0 and ev.circuit_error("vocab")[0] == 0
    np.testing.assert_allclose(ev.kl[0], 0, atol=1e-5)
    # the empty circuit's errors: where the corrupted run's top answer differs from the clean one's
    params = model.params
    top = lambda tokens: np.asarray(
        mv.models.transformer.forward(
            model.config, params, tokens, data.attention_mask, logit_positions=data.answer_pos
        )
    )
    clean, corrupted = top(data.clean), top(data.corrupted)
    ids = np.concatenate([data.correct, data.incorrect], 1)
    pick = lambda logits: ids[np.arange(len(data)), np.argmax(np.take_along_axis(logits, ids, 1), 1)]
    assert ev.circuit_error("task")[1] == pytest.approx(np.mean(pick(clean) != pick(corrupted)))
    assert ev.circuit_error("vocab")[1] == pytest.approx(np.mean(clean.argmax(1) != corrupted.argmax(1)))
    log_p = (
        clean - np.log(np.exp(clean - clean.max(1, keepdims=True)).sum(1, keepdims=True)) - clean.max(1, keepdims=True)
    )
    log_q = (
        corrupted
        - np.log(np.exp(corrupted - corrupted.max(1, keepdims=True)).sum(1, keepdims=True))
        - corrupted.max(1, keepdims=True)
    )
    np.testing.assert_allclose(ev.kl[1], (np.exp(log_p) * (log_p - log_q)).sum(1), rtol=1e-3, atol=1e-5)


def test_a_stack_equals_one_by_one_and_the_numpy_oracle(tiny, monkeypatch):
    model, data = tiny
    g = model.graph
    # counterfactual patching runs each input on its window of positions, grouped by width: with 2
    # inputs per call and compilations free the stack runs several widths, one by one (8 per call)
    # runs one, all shorter than the prompts, so the oracle below checks the windowed path
    widths = windows(data, "patch", 2)
    assert len(np.unique(widths)) > 1 and widths.max() < data.n_positions
    assert len(np.unique(windows(data, "patch", 8))) == 1
    # a width costs a compilation: a few circuits on a few inputs take one
    assert len(np.unique(windows(data, "patch", 2, per_width=mv.evaluation.COMPILE_POSITIONS / 5))) == 1
    monkeypatch.setattr(mv.evaluation, "COMPILE_POSITIONS", 0.0)
    rng = np.random.default_rng(5)
    per_input = rng.normal(size=(3, g.n_edges)).astype(np.float32)
    circuits = [mv.circuits.select(per_input[i], n, graph=g) for i, n in enumerate((10, 30, 80))]
    circuits.append(mv.Circuit(g, rng.random(g.n_edges) < 0.5))  # unpruned, dense
    budget = 2 * 2**20
    assert mv.evaluation.circuit_chunk(model.config, 2, data.n_positions, budget) < len(circuits)  # several chunks
    stack = mv.evaluate(model, data, circuits, batch_size=2, memory_budget=budget, progress=False)
    for i, c in enumerate(circuits):
        one = mv.evaluate(model, data, c, progress=False)
        assert isinstance(one.faithfulness, float)
        np.testing.assert_allclose(one.metric, stack.metric[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(one.agree_task, stack.agree_task[i])
        np.testing.assert_allclose(one.kl, stack.kl[i], rtol=1e-4, atol=1e-6)
    # the numpy graph forward with the non-circuit edges patched by hand
    params = jax.tree.map(np.asarray, model.params)
    _, ref = reference.graph_forward(model.config, params, data.corrupted, data.attention_mask)
    c = circuits[-1]
    patch = {(g.src_names[g.edge_src[e]], g.dst_names[g.edge_dst[e]]): 0.0 for e in np.nonzero(~c.edges)[0]}
    logits, _ = reference.graph_forward(
        model.config, params, data.clean, data.attention_mask, corrupted=ref, edge_mask=patch, at=data.answer_pos
    )
    expected = np.asarray(mv.tasks.metrics.logit_diff(logits, data.correct, data.incorrect))
    np.testing.assert_allclose(stack.metric[-1], expected, rtol=1e-3, atol=1e-4)
    assert np.abs(expected - stack.full_metric).max() > 1e-2  # the circuit matters


def test_evaluate_curve(tiny):
    model, data = tiny
    g = model.graph
    per_input = np.random.default_rng(6).normal(size=(4, g.n_edges)).astype(np.float32)
    scores = mv.Scores(per_input, g, "edge", "eap")
    fractions = (0.01, 0.05, 0.2, 1.0)
    curve = mv.evaluate_curve(model, data, scores, fractions, progress=False)
    np.testing.assert_array_equal(curve.n_requested, np.floor(np.array(fractions) * g.n_edges).astype(int))
    for n, kept, f in zip(curve.n_requested, curve.n_edges, curve.faithfulness, strict=True):
        if n == 0:
            assert kept == 0
            continue
        c = mv.circuits.select(scores, int(n))
        assert c.n_edges == kept
        assert mv.evaluate(model, data, c, progress=False).faithfulness == pytest.approx(f, rel=1e-4, abs=1e-5)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    cpr, cmd = mv.evaluation.curve_areas(fractions, curve.faithfulness)
    assert (curve.cpr, curve.cmd) == (pytest.approx(cpr), pytest.approx(cmd))
    assert json.dumps(curve.summary())


def test_evaluate_bad_input(tiny):
    model, data = tiny
    with pytest.raises(ValueError, match="empty dataset"):
        empty = {f: getattr(data, f)[:0] for f in mv.tasks.data._ARRAYS}
        mv.evaluate(model, dataclasses.replace(data, **empty, clean_text=(), corrupted_text=()), np.ones(110, bool))
    with pytest.raises(ValueError, match="does not fit the model"):
        mv.evaluate(model, data, mv.Circuit(mv.Graph(1, 1), np.ones(mv.Graph(1, 1).n_edges, bool)))
    with pytest.raises(ValueError, match="must be boolean"):
        mv.evaluate(model, data, np.ones(model.graph.n_edges))
    with pytest.raises(ValueError, match=r"shape \[C, "):
        mv.evaluate(model, data, np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="no circuits"):
        mv.evaluate(model, data, [])
    with pytest.raises(ValueError, match="unknown ablation"):
        mv.evaluate(model, data, np.ones(model.graph.n_edges, bool), ablation="resample")
    with pytest.raises(MemoryError, match=r"budget of 0.000954 MiB is too small for one circuit .*about \d"):
        mv.evaluate(model, data, np.ones(model.graph.n_edges, bool), memory_budget=1000)
    for name, bad in (("batch_size", 2.5), ("batch_size", 0), ("memory_budget", 0), ("memory_budget", 1e9)):
        with pytest.raises(ValueError, match=f"{name}.* must be an integer ≥ 1"):
            mv.evaluate(model, data, np.ones(model.graph.n_edges, bool), **{name: bad})


def test_nonfinite_scores_are_refused_by_every_entry_point(tiny):
    """One NaN among finite per-input scores, or an inf, is an error everywhere (it used to drop an
    edge silently, or rank an inf first); edges unscored for every input (an exact subset run)
    are accepted by the selection, which never picks them, and refused by the statistics."""
    model, data = tiny
    g = model.graph
    per_input = np.random.default_rng(7).normal(size=(4, g.n_edges)).astype(np.float32)
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = per_input.copy()
        bad[2, 9] = bad_value
        scores = mv.Scores(bad, g, "edge", "exact")
        for call in (
            lambda s=scores: mv.circuits.select(s, 5),
            lambda s=scores: mv.evaluate_curve(model, data, s, (0.1, 1.0), progress=False),
            lambda s=scores: mv.stats.bootstrap(s, 4, 5, key=jax.random.key(0)),
            lambda s=scores: mv.stats.edge_variability(s),
        ):
            with pytest.raises(ValueError, match=r"NaN/inf values \(e\.g\. input 2, edge 9"):
                call()
    agg = per_input.mean(0)
    agg[3] = np.inf
    with pytest.raises(ValueError, match=r"NaN/inf values \(e\.g\. edge 3"):
        mv.circuits.select(agg, 5, graph=g)
    unscored = per_input.copy()
    unscored[:, :50] = np.nan
    c = mv.circuits.select(mv.Scores(unscored, g, "edge", "exact"), g.n_edges - 50, prune_circuit=False)
    assert not c.edges[:50].any() and c.edges[50:].all()
    with pytest.raises(ValueError, match="NaN/inf values"):
        mv.stats.bootstrap(mv.Scores(unscored, g, "edge", "exact"), 4, 5, key=jax.random.key(0))


def test_standard_errors_match_the_sampling_spread():
    """Planted per-input metrics: the delta-method SE of faithfulness and the SE of the circuit
    error equal the spread of the statistic over many independent datasets (the oracle)."""
    rng = np.random.default_rng(8)
    N, reps = 200, 4000

    def draw(size):
        full = rng.normal(3.0, 1.0, size)
        empty = rng.normal(0.5, 0.8, size)
        metric = empty + 0.6 * (full - empty) + rng.normal(0.0, 0.7, size)
        agree = rng.random(size) < 0.85
        return full, empty, metric, agree

    def evaluation(full, empty, metric, agree):
        n = full.shape[-1]
        return mv.CircuitEvaluation(
            metric=metric, full_metric=full, empty_metric=empty, agree_task=agree, agree_vocab=agree,
            kl=np.zeros(n), n_edges=np.array(10),
        )  # fmt: skip

    one = evaluation(*draw(N))
    many = [evaluation(*draw(N)) for _ in range(reps)]
    faith = np.array([e.faithfulness for e in many])
    error = np.array([e.circuit_error() for e in many])
    assert one.faithfulness_se == pytest.approx(faith.std(), rel=0.1)
    assert one.circuit_error_se("task") == pytest.approx(error.std(), rel=0.1)
    p = one.circuit_error("vocab")
    assert one.circuit_error_se("vocab") == pytest.approx(np.sqrt(p * (1 - p) / (N - 1)), rel=1e-9)
    row = one.summary()
    assert row["faithfulness_se"] == pytest.approx(one.faithfulness_se) and "circuit_error_task_se" in row
    assert np.isnan(evaluation(*draw(1)).faithfulness_se)  # one input: no spread to measure


def test_circuit_chunks_are_the_fewest_calls_of_equal_size():
    """engine.even_chunks by brute force: the fewest calls within the budget's fit, less than one
    padded circuit per call, and one call rounded up to a power of two (fewer compilations) unless
    ``bucketed=False`` (then exactly ``n``)."""
    for n in range(1, 150):
        for fit in range(1, 70):
            chunk, calls = mv.engine.even_chunks(n, fit)
            assert calls == min(k for k in range(1, n + 1) if k * fit >= n) and 1 <= chunk <= fit
            assert chunk * calls >= n
            if calls > 1:
                assert chunk * calls - n < calls
            else:
                assert chunk in (fit, 1 << (n - 1).bit_length()) and chunk >= n
            exact_chunk, exact_calls = mv.engine.even_chunks(n, fit, bucketed=False)  # the estimators' batches
            assert exact_calls == calls and exact_chunk * calls - n < calls and exact_chunk <= fit
            assert exact_chunk == (n if calls == 1 else chunk)


def test_evaluate_progress_false_is_silent(tiny, capsys, monkeypatch):
    """``progress=False`` silences the bar (as in ``mv.attribute``); ``True`` shows it at once here."""
    from mivar_jax import _progress

    monkeypatch.setattr(_progress, "DELAY_S", 0.0)  # show even the shortest work
    model, data = tiny
    masks = np.ones((2, model.graph.n_edges), bool)
    mv.evaluate(model, data, masks, progress=False)
    assert capsys.readouterr().err == ""
    mv.evaluate(model, data, masks, progress=True)
    assert "evaluate" in capsys.readouterr().err
