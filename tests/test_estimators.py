"""Estimators against oracles: brute-force numpy patching, hand-computable models, identities."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models import EdgeMix, Model, ModelConfig, Replace, Taps
from mivar_jax.patching import first_changes, windows
from mivar_jax.tasks.data import TaskData
from tests import reference


def _tiny(hf_dirs, name):
    model = mv.load_model(hf_dirs[name][0])
    data = mv.tasks.make("ioi", model, n=3, seed=1)
    # right-padded prompts whose windows (first change … answer) start at different positions
    first = first_changes(data.clean, data.corrupted, data.attention_mask, data.answer_pos)
    assert len(np.unique(first)) > 1 and (windows(data, "patch") < data.n_positions).all()
    return model, data


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa-llama3"])
def tiny(request, hf_dirs):
    """Both architectures: for the oracle comparisons."""
    return _tiny(hf_dirs, request.param)


@pytest.fixture(scope="module")
def tiny_llama(hf_dirs):
    """One architecture (GQA, RoPE): for the estimator logic that does not depend on it."""
    return _tiny(hf_dirs, "llama-gqa-llama3")


def _np_metric(logits_NxV, data):
    out = []
    for i in range(len(data)):
        good = [t for t in data.correct[i] if t >= 0]
        bad = [t for t in data.incorrect[i] if t >= 0]
        out.append(logits_NxV[i, good].mean() - logits_NxV[i, bad].mean())
    return np.array(out)


def _brute_force(model, data, level="edge", ablation="patch"):
    """One numpy forward per edge (or node) with that edge patched by hand."""
    g = model.graph
    params = jax.tree.map(np.asarray, model.params)
    run = lambda **kw: reference.graph_forward(
        model.config, params, data.clean, data.attention_mask, at=data.answer_pos, **kw
    )
    logits, clean_nodes = run()
    base = _np_metric(logits, data)
    if ablation == "patch":
        embeds = np.asarray(mv.tasks.corrupted_embeddings(model, data))
        _, ref = reference.graph_forward(model.config, params, data.corrupted, data.attention_mask, input_embeds=embeds)
    elif ablation == "zero":
        ref = {k: np.zeros_like(v) for k, v in clean_nodes.items()}
    else:
        w = data.attention_mask[..., None].astype(np.float64)
        ref = {k: np.broadcast_to((v * w).sum((0, 1)) / w.sum(), v.shape) for k, v in clean_nodes.items()}
    items = list(zip(g.edge_src, g.edge_dst, strict=True)) if level == "edge" else range(g.n_src)
    out = np.zeros((len(data), len(items)))
    for j, item in enumerate(items):
        if level == "edge":
            patch = {(g.src_names[item[0]], g.dst_names[item[1]]): 0.0}
        else:
            patch = {(g.src_names[item], g.dst_names[d]): 0.0 for d in np.nonzero(g.valid[item])[0]}
        logits, _ = run(corrupted=ref, edge_mask=patch)
        out[:, j] = _np_metric(logits, data) - base
    return out


@pytest.mark.parametrize("level", ["edge", "node"])
def test_exact_equals_brute_force_patching(tiny, level):
    model, data = tiny
    scores = mv.attribute(model, data, method="exact", level=level, batch_size=2, progress=False)
    expected = _brute_force(model, data, level)
    assert scores.per_input.shape == expected.shape
    np.testing.assert_allclose(scores.per_input, expected, atol=2e-5 * np.abs(expected).max() + 1e-6, rtol=1e-3)
    assert np.abs(expected).max() > 1e-3  # the patches matter


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_exact_ablations_equal_brute_force(tiny, ablation):
    model, data = tiny
    scores = mv.attribute(model, data, method="exact", ablation=ablation, progress=False)
    expected = _brute_force(model, data, "edge", ablation)
    np.testing.assert_allclose(scores.per_input, expected, atol=2e-5 * np.abs(expected).max() + 1e-6, rtol=1e-3)


def test_counterfactual_noise_flows_through_exact_every_gradient_method_and_subsets(tiny_llama):
    model, data = tiny_llama
    noisy = data.with_noise(2.0, seed=3)
    exact = mv.attribute(model, noisy, method="exact", progress=False)
    np.testing.assert_allclose(
        exact.per_input, _brute_force(model, noisy), atol=2e-5 * np.abs(exact.per_input).max() + 1e-6, rtol=1e-3
    )
    subset = [5, 0, 17, 5, exact.per_input.shape[1] - 1]
    part = mv.attribute(model, noisy, method="exact", subset=subset, progress=False).per_input
    kept = sorted(set(subset))  # chunk shapes differ from the full run: float-reordering error only
    tol = dict(atol=2e-5 * np.abs(exact.per_input).max() + 1e-6, rtol=1e-3)
    np.testing.assert_allclose(part[:, kept], exact.per_input[:, kept], **tol)
    assert np.isnan(np.delete(part, subset, axis=1)).all()
    with pytest.raises(ValueError, match="subset applies to method='exact'"):
        mv.attribute(model, data, method="eap", subset=subset)
    with pytest.raises(ValueError, match="subset must be non-empty"):
        mv.attribute(model, data, method="exact", subset=[exact.per_input.shape[1]])
    for method in mv.estimators.METHODS:
        a = mv.attribute(model, data, method=method, steps=2, progress=False).per_input
        b = mv.attribute(model, noisy, method=method, steps=2, progress=False).per_input
        assert np.abs(a - b).max() > 1e-4 * np.abs(a).max(), method


def _affine_norms(model):
    """The same model with every norm made affine, norm(x) = 10 (x − mean)·γ + β (huge ε, scales
    ×1e7): edges into ``logits`` then change the metric linearly; the rest stays nonlinear."""
    params = jax.tree.map(lambda a: a, model.params)
    params["ln_f"] = dict(params["ln_f"], scale=params["ln_f"]["scale"] * 1e7)
    params["blocks"] = dict(params["blocks"])
    for key in ("ln1", "ln2"):
        params["blocks"][key] = dict(params["blocks"][key], scale=params["blocks"][key]["scale"] * 1e7)
    return Model(dataclasses.replace(model.config, norm_eps=1e12), params, model.tokenizer, model.source)


def test_eap_equals_exact_where_the_metric_is_linear(hf_dirs):
    model = mv.load_model(hf_dirs["gpt2"][0])
    linear = _affine_norms(model)
    data = mv.tasks.make("ioi", model, n=4, seed=1)
    g = model.graph
    into_logits = g.edge_dst == g.n_dst - 1
    exact = mv.attribute(linear, data, method="exact", progress=False).per_input[:, into_logits]
    eap = mv.attribute(linear, data, method="eap", progress=False).per_input[:, into_logits]
    assert np.abs(exact).max() > 1e-3
    np.testing.assert_allclose(eap, exact, rtol=1e-3, atol=1e-5 * np.abs(exact).max())
    # with the ordinary (nonlinear) final norm, first order is not exact
    exact_n = mv.attribute(model, data, method="exact", progress=False).per_input[:, into_logits]
    eap_n = mv.attribute(model, data, method="eap", progress=False).per_input[:, into_logits]
    assert np.abs(eap_n - exact_n).max() > 1e-2 * np.abs(exact_n).max()


def test_ig_with_many_steps_is_closer_to_exact_than_eap(tiny_llama):
    model, data = tiny_llama
    exact = mv.attribute(model, data, method="exact", progress=False).per_input
    eap = mv.attribute(model, data, method="eap", progress=False).per_input
    ig = mv.attribute(model, data, method="eap-ig-inputs", steps=32, ig_convention="midpoint", progress=False).per_input
    err = lambda s: np.abs(s - exact).mean()
    assert err(ig) < 0.5 * err(eap)


def test_per_input_mean_equals_the_reference_batch_score(tiny_llama):
    """Σ over the batch of the summed-metric gradient products, / N — the reference library's way."""
    model, data = tiny_llama
    scores = mv.attribute(model, data, method="eap", batch_size=1, progress=False)
    cfg, params, g = model.config, model.params, model.graph
    b = data.batch()
    embeds = mv.tasks.corrupted_embeddings(model, data)
    _, corrupted = mv.models.forward(cfg, params, b.corrupted, b.attention_mask, input_embeds=embeds, nodes=True)

    def total(taps):
        logits, nodes = mv.models.forward(
            cfg, params, b.clean, b.attention_mask, Taps(taps), logit_positions=b.answer_pos, nodes=True
        )
        return mv.tasks.logit_diff(logits, b.correct, b.incorrect).sum(), nodes

    N, P = b.clean.shape
    grads, clean = jax.grad(total, has_aux=True)(jnp.zeros((g.n_dst, N, P, cfg.d_model)))
    batch_score = np.asarray(jnp.einsum("snpd,tnpd->st", corrupted - clean, grads))[g.edge_src, g.edge_dst] / N
    np.testing.assert_allclose(scores.per_input.mean(0), batch_score, rtol=1e-4, atol=1e-6 * np.abs(batch_score).max())
    np.testing.assert_allclose(
        mv.aggregate(scores, "mean"), batch_score, rtol=1e-4, atol=1e-6 * np.abs(batch_score).max()
    )


def test_estimator_identities(tiny_llama):
    model, data = tiny_llama
    run = lambda **kw: mv.attribute(model, data, progress=False, **kw).per_input
    eap = run(method="eap")
    np.testing.assert_allclose(run(method="ceap", steps=1), eap, rtol=1e-4, atol=1e-6)  # conductance, one step
    np.testing.assert_allclose(run(method="eap-ig-inputs", steps=1, ig_convention="right"), eap, rtol=1e-4, atol=1e-6)
    # node scores of a gradient method are the sums of the node's outgoing edge scores
    nodes = run(method="eap-ig-inputs", steps=3, level="node")
    edges = run(method="eap-ig-inputs", steps=3)
    summed = np.zeros_like(nodes)
    np.add.at(summed.T, model.graph.edge_src, edges.T)
    np.testing.assert_allclose(nodes, summed, rtol=1e-4, atol=1e-6)


def test_ig_on_activations_integrates_each_groups_patch(tiny_llama):
    """Completeness: summed over a group's nodes and all their edges, IG on activations (many
    steps) gives the exact effect of patching the group's outputs."""
    model, data = tiny_llama
    cfg, g = model.config, model.graph
    nodes = mv.attribute(
        model, data, method="eap-ig-activations", steps=64, pooling="source", level="node", progress=False
    ).per_input  # source pooling: each group's own integrated gradients
    b = data.batch()
    embeds = mv.tasks.corrupted_embeddings(model, data)
    _, corrupted = model.forward(b.corrupted, b.attention_mask, input_embeds=embeds, nodes=True)
    clean_logits = model(b.clean, b.attention_mask, logit_positions=b.answer_pos)
    base = np.asarray(mv.tasks.logit_diff(clean_logits, b.correct, b.incorrect))
    H = cfg.n_heads
    firsts = [1 + layer * (H + 1) for layer in range(cfg.n_layers)]
    groups = [[0]] + [list(range(f, f + H)) for f in firsts] + [[f + H] for f in firsts]
    for rows in groups:
        mask = np.ones((g.n_src, g.n_dst), np.float32)
        mask[rows] = 0.0
        logits, _ = model.forward(
            b.clean, b.attention_mask, EdgeMix(mask, corrupted), logit_positions=b.answer_pos, nodes=True
        )
        exact = np.asarray(mv.tasks.logit_diff(logits, b.correct, b.incorrect)) - base
        np.testing.assert_allclose(nodes[:, rows].sum(1), exact, rtol=0.05, atol=0.02 * np.abs(exact).max() + 1e-5)


def _input_run_gradients(model, data, steps):
    """Hand-written loop: Σ_k of every slot's gradient [T, N, P, D] in the runs of EAP-IG on
    activations that interpolate the input group, z̃ + (k/m)(z − z̃), k = 1 … m."""
    cfg, params, g = model.config, model.params, model.graph
    b = data.batch()
    embeds = mv.tasks.corrupted_embeddings(model, data)
    _, corrupted = mv.models.forward(cfg, params, b.corrupted, b.attention_mask, input_embeds=embeds, nodes=True)
    _, clean = mv.models.forward(cfg, params, b.clean, b.attention_mask, nodes=True)
    N, P = b.clean.shape
    weights = jnp.zeros(g.n_src).at[0].set(1.0)
    total = 0.0
    for k in range(1, steps + 1):
        values = corrupted + (k / steps) * (clean - corrupted)

        def metric(taps, values=values):
            logits, _ = mv.models.forward(cfg, params, b.clean, b.attention_mask, (Replace(values, weights), Taps(taps)), logit_positions=b.answer_pos, nodes=True)  # fmt: skip
            return mv.tasks.logit_diff(logits, b.correct, b.incorrect).sum()

        total = total + jax.grad(metric)(jnp.zeros((g.n_dst, N, P, cfg.d_model)))
    return total, np.asarray(corrupted - clean)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-llama3"])
def test_reference_tl_pooling_reproduces_the_librarys_missing_layer0_gradient(hf_dirs, name):
    """The reference library, run through TransformerLens, gets no gradient at layer 0's q/k/v
    inputs in the run that interpolates the input on models without learned position embeddings
    (docs/statistics.md). ``reference-tl`` = ``reference`` minus exactly that run's contribution to
    the edges input → a0.h·<q|k|v> on Llama, and = ``reference`` on GPT-2."""
    model, data = _tiny(hf_dirs, name)
    g, H, steps = model.graph, model.config.n_heads, 2
    run = lambda pooling: (
        mv.attribute(model, data, method="eap-ig-activations", steps=steps, pooling=pooling, progress=False).per_input
    )
    ref, tl = run("reference"), run("reference-tl")
    default = mv.attribute(model, data, method="eap-ig-activations", steps=steps, progress=False)
    assert default.params["pooling"] == "reference"  # the reference library's pooling by default
    np.testing.assert_array_equal(default.per_input, ref)
    if name == "gpt2":
        np.testing.assert_array_equal(tl, ref)
        return
    grads, delta = _input_run_gradients(model, data, steps)
    n_groups = 1 + 2 * model.config.n_layers
    layer0_qkv = np.nonzero((g.edge_src == 0) & (g.edge_dst < 3 * H))[0]
    assert len(layer0_qkv) == 3 * H
    dropped = np.einsum("npd,tnpd->nt", delta[0], np.asarray(grads))[:, g.edge_dst[layer0_qkv]] / (steps * n_groups)
    others = np.setdiff1d(np.arange(g.n_edges), layer0_qkv)
    np.testing.assert_array_equal(tl[:, others], ref[:, others])
    scale = np.abs(ref[:, layer0_qkv]).max()
    np.testing.assert_allclose(tl[:, layer0_qkv], ref[:, layer0_qkv] - dropped, rtol=1e-4, atol=1e-5 * scale)
    assert np.abs(dropped).max() > 0.05 * scale  # the artefact is visible, not a rounding difference


def _hand_model():
    """One layer, one head, width 2, vocabulary 3; attention and MLP write nothing; the final norm
    is made affine. Token embeddings e0 = (1, 0), e1 = (0, 1), e2 = (2, 0); logits = W_U (x − mean x)."""
    cfg = ModelConfig(
        name="hand", family="gpt2", n_layers=1, n_heads=1, n_kv_heads=1, d_model=2, d_head=2, d_mlp=2,
        vocab_size=3, n_ctx=4, norm_eps=1e12, qkv_bias=True, o_bias=True, mlp_bias=True,
    )  # fmt: skip
    params = mv.models.init_params(cfg, jax.random.key(0))
    params = jax.tree.map(jnp.zeros_like, params)
    params["tok_embed"] = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    for key in ("ln1", "ln2", "ln_f"):
        node = params["blocks"][key] if key != "ln_f" else params["ln_f"]
        node["scale"] = jnp.full_like(node["scale"], 1e6)  # (x − mean) · 1e6 / √1e12 = x − mean
    return Model(cfg, params)


def test_sign_convention_on_a_hand_computable_model():
    """Clean token 2, corrupted token 1, answer 0 vs 1. x − mean(x): clean (1, −1), corrupted
    (−½, ½). With tied W_U = E: logits_clean = (1, −1, 2), logits_corrupted = (−½, ½, −1):
    metric logit(0) − logit(1) is +2 clean, −1 corrupted. Patching input→logits gives
    Δmetric = −1 − 2 = −3 (metric(patched) − metric(clean)), and EAP is exact here (linear)."""
    model = _hand_model()
    one = lambda x: np.array([x], np.int32)
    data = TaskData(
        task="hand", metric="logit_diff", counterfactual="x", clean=one([2]), corrupted=one([1]),
        attention_mask=one([1]), answer_pos=np.array([0], np.int32), correct=one([0]), incorrect=one([1]),
        template=np.array([0], np.int32), family=np.array([0], np.int32), uid=np.array([0]),
        clean_text=("c",), corrupted_text=("k",),
    )  # fmt: skip
    e = model.graph.edge_index("input->logits")
    for method in mv.estimators.METHODS:
        scores = mv.attribute(model, data, method=method, steps=4, progress=False)
        assert scores.per_input[0, e] == pytest.approx(-3.0, abs=1e-4), method
        assert scores.clean_metric[0] == pytest.approx(2.0, abs=1e-4)


def test_bad_requests_are_clear_errors(tiny_llama):
    model, data = tiny_llama
    with pytest.raises(ValueError, match="unknown method"):
        mv.attribute(model, data, method="acdc")
    with pytest.raises(ValueError, match="unknown level"):
        mv.attribute(model, data, level="neuron")
    with pytest.raises(ValueError, match="steps ≥ 1"):
        mv.attribute(model, data, method="eap-ig-inputs", steps=0)
    with pytest.raises(ValueError, match="unknown ablation"):
        mv.attribute(model, data, ablation="resample")
    with pytest.raises(MemoryError, match=r"budget of 0.000954 MiB is too small for one edge: .* about \d\.\d+ MiB"):
        mv.attribute(model, data, method="exact", memory_budget=1000, progress=False)
    for bad in (2.5, 0, True):
        with pytest.raises(ValueError, match="batch_size must be an integer ≥ 1"):
            mv.attribute(model, data, batch_size=bad)
    for bad in (0, -5, 1.5e9):
        with pytest.raises(ValueError, match="memory_budget .* must be an integer ≥ 1"):
            mv.attribute(model, data, memory_budget=bad)
    with pytest.raises(ValueError, match="unknown pooling"):
        mv.attribute(model, data, method="eap-ig-activations", pooling="mean")
    broken = Model(model.config, jax.tree.map(lambda a: a, model.params), model.tokenizer)
    broken.params["blocks"] = dict(
        broken.params["blocks"], w_out=broken.params["blocks"]["w_out"].at[-1, 0, 0].set(jnp.nan)
    )
    with pytest.raises(FloatingPointError, match="non-finite scores.*input 0 ×"):
        mv.attribute(broken, data, method="eap", progress=False)


def test_scores_round_trip_and_json(tiny_llama, tmp_path):
    model, data = tiny_llama
    scores = mv.attribute(model, data, method="eap", progress=False)
    scores.save(tmp_path / "s.safetensors")
    back = mv.Scores.load(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back.per_input, scores.per_input)
    np.testing.assert_array_equal(back.clean_metric, scores.clean_metric)
    assert back.graph == scores.graph and back.method == "eap" and back.params == scores.params
    js = mv.Graph.from_json(scores.to_graph_json(tmp_path / "g.json"))
    # the JSON holds mv.aggregate's mean: exact sums of scores rounded to each edge's fixed-point grid
    # (2^-24 of the power of two above its largest |score|, aggregation.py), within that of the true mean
    s64 = scores.per_input.astype(np.float64)
    grid = 2.0 ** (np.ceil(np.log2(np.maximum(np.abs(s64).max(0), 1e-30))) - 24)
    assert np.all(np.abs(js.scores - s64.mean(0)) <= grid + 1e-7 * np.abs(s64.mean(0)))
    assert len(scores[np.array([0, 2])].per_input) == 2


_MULTI_DEVICE = textwrap.dedent(
    """
    import os, sys, numpy as np
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax
    import mivar_jax as mv
    assert jax.device_count() == 8
    model = mv.load_model(sys.argv[1])
    placed = mv.load_model(sys.argv[1], mesh=mv.sharding.make_mesh())  # every parameter on all 8 devices
    for p, q in zip(jax.tree.leaves(placed.params), jax.tree.leaves(model.params), strict=True):
        assert p.sharding.is_fully_replicated and len(p.sharding.device_set) == 8, p.sharding
        assert np.array_equal(p, q)
    data = mv.tasks.make("ioi", model, n=5, seed=0).with_noise(0.5, seed=1)
    one = mv.sharding.make_mesh(edges=1, devices=jax.devices()[:1])
    both = mv.sharding.make_mesh(edges=4, inputs=2)
    for method, kw in [("exact", {}), ("eap-ig-inputs", {"steps": 2}), ("eap", {"ablation": "mean", "level": "node"})]:
        a = mv.attribute(model, data, method=method, batch_size=2, mesh=one, progress=False, **kw).per_input
        c = mv.attribute(placed, data, method=method, batch_size=2, mesh=both, progress=False, **kw).per_input
        assert np.array_equal(a, c), (method, kw, np.abs(a - c).max())
    print("IDENTICAL")
    """
)


def test_identical_scores_on_one_and_eight_devices(hf_dirs, tmp_path):
    script = tmp_path / "multi.py"
    script.write_text(_MULTI_DEVICE)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, str(script), hf_dirs["llama-gqa-llama3"][0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert "IDENTICAL" in out.stdout, out.stderr[-3000:]


def test_window_widths_are_the_cheapest_grouping():
    """The dynamic programme against every choice of at most k widths (brute force)."""
    import itertools

    from mivar_jax.patching.windows import _cheapest_widths

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        values = np.sort(rng.choice(np.arange(1, 30), n, replace=False))
        counts = rng.integers(1, 20, n)
        k, batch, per_call = int(rng.integers(1, 4)), int(rng.integers(1, 10)), float(rng.uniform(0, 60))
        per_width = float(rng.choice([0.0, rng.uniform(0, 200)]))  # a width's compilation

        def total(widths, values=values, counts=counts, batch=batch, per_call=per_call, per_width=per_width):
            widths = np.sort(np.asarray(widths))
            assigned = widths[np.searchsorted(widths, values)]
            sizes = [counts[assigned == w].sum() for w in widths]
            return sum(c * w + -(-c // batch) * per_call + per_width for c, w in zip(sizes, widths, strict=True) if c)

        got = _cheapest_widths(values, counts, k, batch, per_call, per_width)
        best = min(
            total(c) for r in range(1, min(k, n) + 1) for c in itertools.combinations(values, r) if c[-1] == values[-1]
        )
        assert len(got) <= k and got[-1] == values[-1] and set(got) <= set(values)
        assert total(got) == pytest.approx(best)


def test_host_parameters_run_like_device_parameters(tiny_llama):
    """A Model built by hand with numpy parameters runs every driver (each job moves the parameters
    to the device once: engine.on_mesh) and gives the scores of the loaded model."""
    model, data = tiny_llama
    host = Model(model.config, jax.tree.map(np.asarray, model.params), model.tokenizer)
    assert isinstance(host.params["tok_embed"], np.ndarray)
    for method in ("eap", "exact"):
        a = mv.attribute(model, data, method, level="node", progress=False).per_input
        b = mv.attribute(host, data, method, level="node", progress=False).per_input
        np.testing.assert_array_equal(a, b)
    c = mv.circuits.select(mv.attribute(model, data, "eap", progress=False), n_edges=5)
    assert (
        mv.evaluate(host, data, c, progress=False).faithfulness
        == mv.evaluate(model, data, c, progress=False).faithfulness
    )


def test_gradient_memory_model_bounds_xlas_buffers(tiny_llama):
    """Each gradient estimator's ``bytes_per_input`` against XLA's buffer assignment of its compiled
    kernel (``memory_analysis``): an upper bound of the temporary memory added by each input, and
    not so loose that batches shrink for nothing (within 3.5×). On the tiny Llama (GQA, gated MLP;
    the logits dominate) and a two-layer model of GPT-2 small's width (slot gradients dominate)."""
    from benchmarks.common import gpt2_small_config
    from mivar_jax.estimators.gradient import _dense_kernel
    from mivar_jax.estimators.registry import ESTIMATORS, Options
    from tests.factory import gpt2_tokenizer

    cfg = gpt2_small_config(n_layers=2)
    wide = mv.Model(cfg, mv.models.init_params(cfg, jax.random.key(0)), gpt2_tokenizer())
    for model, data in (tiny_llama, (wide, mv.tasks.make("ioi", wide, n=4, seed=0))):
        for est in (e for e in ESTIMATORS.values() if e.kernel is not None):  # every dense estimator
            method = est.name
            o = Options(data.metric, "edge", "patch", 3 if est.takes_steps else None, "reference", "reference")
            kernel, temp = _dense_kernel(model.config, est, o, None), {}
            for n in (2, 4):
                b = data.batch(np.arange(n) % len(data))
                compiled = kernel.lower(model.params, b, data.noise, data.noise_seed, jnp.zeros(1)).compile()
                temp[n] = compiled.memory_analysis().temp_size_in_bytes
            growth, predicted = (temp[4] - temp[2]) / 2, est.bytes_per_input(model.config, data.n_positions)
            assert growth <= predicted <= 3.5 * growth, (method, model.config.name, growth, predicted)
