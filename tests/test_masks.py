"""Learned edge masks (``mv.learn_mask``) on a model with a planted circuit: a random three-layer
GPT-2-style model whose other heads and MLPs write nothing (their output weights zeroed), so the
only edges that can carry any signal are those among the input, the planted nodes and the logits.
Exact patching confirms it (every other edge's effect is float noise); the learned masks must find
those edges, meet their sparsity target, beat EAP-IG's top-n circuit where a small circuit must
choose, and give seed by seed what they give vmapped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.circuits.pruning import prune_dense
from mivar_jax.masks import BETA, GAMMA, ZETA, learn_mask
from mivar_jax.models import Model, ModelConfig
from mivar_jax.models.params import param_shapes
from mivar_jax.tasks import TaskData

KEPT_HEADS, KEPT_MLPS = {(0, 1), (2, 0)}, {1}
PLANTED_NODES = {"input", "a0.h1", "a2.h0", "m1"}


@pytest.fixture(scope="module")
def planted():
    cfg = ModelConfig(
        name="planted", family="gpt2", n_layers=3, n_heads=3, n_kv_heads=3, d_model=12, d_head=4, d_mlp=24,
        vocab_size=29, n_ctx=8, qkv_bias=True, o_bias=True, mlp_bias=True, activation="gelu_tanh",
    )  # fmt: skip
    rng = np.random.default_rng(7)

    def draw(path, shape):  # weights N(0, 0.5²): attention far from uniform, MLPs far from linear
        name = path[-1].key
        base, sd = (1.0, 0.1) if name == "scale" else (0.0, 0.1 if name == "bias" else 0.5)
        return base + sd * rng.normal(size=shape)

    params = jax.tree_util.tree_map_with_path(draw, param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            if (layer, head) not in KEPT_HEADS:
                params["blocks"]["w_o"][layer, head] = 0.0
        if layer not in KEPT_MLPS:
            params["blocks"]["w_out"][layer] = 0.0
    model = Model(cfg, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params))
    g = model.graph

    def carries(name):
        src, dst = name.split("->")
        return src in PLANTED_NODES and (dst.split("<")[0] in PLANTED_NODES or dst == "logits")

    circuit = np.array([carries(n) for n in g.edge_names])
    N, P = 24, 6
    clean = rng.integers(1, 29, (N, P)).astype(np.int32)
    corrupted = clean.copy()
    for n in range(N):
        first = rng.integers(1, P)
        corrupted[n, first:] = rng.integers(1, 29, P - first)
    answers = np.stack([rng.choice(np.arange(1, 29), 2, replace=False) for _ in range(N)]).astype(np.int32)
    data = TaskData(
        task="planted", metric="logit_diff", counterfactual="x", clean=clean, corrupted=corrupted,
        attention_mask=np.ones((N, P), np.int32), answer_pos=np.full(N, P - 1, np.int32), correct=answers[:, :1],
        incorrect=answers[:, 1:], template=np.zeros(N, np.int32), family=np.zeros(N, np.int32), uid=np.arange(N),
        clean_text=tuple(f"c{i}" for i in range(N)), corrupted_text=tuple(f"k{i}" for i in range(N)),
    )  # fmt: skip
    return model, data, circuit


def test_the_planted_circuit_is_what_exact_patching_sees(planted):
    model, data, circuit = planted
    effect = np.abs(mv.attribute(model, data, "exact", progress=False).per_input).mean(0)
    assert effect[~circuit].max() < 1e-5 < 1e-2 < effect[circuit].min()
    assert mv.evaluate(model, data, circuit, progress=False).faithfulness == pytest.approx(1.0, abs=1e-5)


def test_learned_masks_recover_the_planted_edges_and_meet_the_target(planted):
    model, data, circuit = planted
    n = int(circuit.sum())  # 18 of 172 edges
    lm = learn_mask(model, data, target_edges=n, steps=400, seeds=3, key=jax.random.key(0), progress=False)
    masks = lm.masks()
    assert masks.shape == (3, model.graph.n_edges)
    assert not (masks & ~circuit).any()  # never an edge that carries nothing
    assert ((lm.logits > 0) & ~circuit).sum() == 0  # nor an open gate
    assert (masks & circuit).sum(1).min() >= 0.75 * n  # most of the planted edges
    np.testing.assert_allclose(lm.density, n / model.graph.n_edges, atol=0.02)  # expected density: the target
    assert lm.density_history[:, 0].min() > 0.5  # it started near the full model and was driven there
    assert lm.kl_history.shape == (3, 40) and (lm.kl < 0.05).all()
    faith = mv.evaluate(model, data, masks, progress=False).faithfulness
    assert faith.min() > 0.85
    # by threshold: the edges with P(gate open) = σ(α + β log(ζ / −γ)) ≥ ½, pruned
    p_open = 1 / (1 + np.exp(-(lm.logits.astype(np.float64) + BETA * np.log(ZETA / -GAMMA))))
    by_threshold = lm.masks(threshold=0.5)
    assert by_threshold.sum() > 0 and not (by_threshold & ~circuit).any()
    np.testing.assert_array_equal(by_threshold, np.asarray(prune_dense(model.graph, jnp.asarray(p_open >= 0.5))[0]))
    with pytest.raises(ValueError, match="pass n_edges or a threshold"):
        lm.masks(5, threshold=0.5)

    st = mv.stats.mask_stability(lm, key=jax.random.key(1))  # seeds as replicates, ranked by α
    np.testing.assert_array_equal(st.circuits, masks)
    pairs = [(a & b).sum() / (a | b).sum() for i, a in enumerate(masks) for b in masks[i + 1 :]]
    assert st.mean_jaccard == pytest.approx(np.mean(pairs), rel=1e-6) and st.method == "seeds"
    assert st.verdict.startswith("undetermined") and "3 seeds of a learned mask" in st.verdict  # B < 100


def test_uniform_gradient_sampling_recovers_the_planted_edges(planted):
    """UGS: each edge kept with probability p = σ(α), gates a uniform ramp around p. No edge that
    carries nothing keeps an open gate (p > ½); the top-n circuits hold most planted edges and
    recover the model's logit difference; the expected density meets the target."""
    model, data, circuit = planted
    n = int(circuit.sum())
    kw = dict(method="ugs", target_edges=n, steps=400, lr=0.2, seeds=3, key=jax.random.key(0), progress=False)
    lm = learn_mask(model, data, **kw)
    assert lm.method == "ugs" and ((lm.logits > 0) & ~circuit).sum() == 0
    masks = lm.masks()
    assert (masks & circuit).sum(1).min() >= 11  # of 18 (measured 12–14; gates open on 11–13 of them)
    np.testing.assert_allclose(lm.density, n / model.graph.n_edges, atol=0.02)  # mean p: the target
    assert mv.evaluate(model, data, masks, progress=False).faithfulness.min() > 0.85  # measured ≥ 0.93
    # the ramp's mean is p: E[z] over many draws of u
    from mivar_jax.masks import GATES

    alpha = jnp.array([-2.0, 0.0, 0.7, 3.0])
    z = GATES["ugs"][0](alpha, jax.random.uniform(jax.random.key(3), (200_000, 4)))
    np.testing.assert_allclose(z.mean(0), jax.nn.sigmoid(alpha), atol=4e-3)


def test_at_a_size_that_must_choose_learned_masks_beat_eap_ig(planted):
    """Six edges of the planted eighteen: EAP-IG ranks edges by their linearised effects one at a
    time; the mask is trained on the circuit's output itself."""
    model, data, _ = planted
    lm = learn_mask(model, data, target_edges=6, steps=400, seeds=3, key=jax.random.key(0), progress=False)
    ig = mv.circuits.select(mv.attribute(model, data, "eap-ig-inputs", steps=5, progress=False), 6)
    ev = mv.evaluate(model, data, [ig, *lm.circuits()], progress=False)
    assert np.median(ev.faithfulness[1:]) >= ev.faithfulness[0] + 0.2
    assert (ev.n_edges[1:] <= 6).all()
    np.testing.assert_allclose(lm.density * model.graph.n_edges, 6, atol=0.02 * model.graph.n_edges)


def test_seeds_trained_together_equal_seeds_trained_one_by_one(planted):
    model, data, circuit = planted
    kw = dict(target_edges=int(circuit.sum()), steps=200, key=jax.random.key(1), progress=False)
    together = learn_mask(model, data, seeds=3, **kw)
    one_by_one = [learn_mask(model, data, seeds=[s], **kw) for s in range(3)]
    in_groups_of_one = learn_mask(model, data, seeds=3, memory_budget=int(1.5 * 2**20), **kw)  # 1 seed per call
    for other in (np.concatenate([x.logits for x in one_by_one]), in_groups_of_one.logits):
        np.testing.assert_allclose(other, together.logits, atol=1e-3)  # float32 rounding of batched products
    np.testing.assert_array_equal(np.concatenate([x.masks() for x in one_by_one]), together.masks())
    assert not np.allclose(together.logits[0], together.logits[1])  # the seeds do differ


def test_a_data_replicate_weights_its_inputs_as_repeating_them(planted):
    """``resample=True``: seed s trains on a multinomial replicate of the inputs; the same training
    on the dataset with each input repeated by its count gives the same mask."""
    model, data, circuit = planted
    kw = dict(target_edges=int(circuit.sum()), steps=100, key=jax.random.key(2), progress=False)
    lm = learn_mask(model, data, seeds=[5], resample=True, **kw)
    counts = lm.input_weights[0].astype(int)
    assert counts.sum() == len(data) and (counts == 0).any() and (counts > 1).any()
    repeated = data[np.repeat(np.arange(len(data)), counts)]
    plain = learn_mask(model, repeated, seeds=[5], **kw)
    np.testing.assert_allclose(plain.logits, lm.logits, atol=1e-3)
    np.testing.assert_array_equal(plain.masks(), lm.masks())


def test_an_interrupted_training_resumes_from_its_checkpoint(planted, tmp_path, monkeypatch):
    model, data, circuit = planted
    kw = dict(target_edges=int(circuit.sum()), steps=60, seeds=2, key=jax.random.key(3), progress=False)
    whole = learn_mask(model, data, **kw)
    path = tmp_path / "masks.npz"
    calls = {"n": 0}
    import mivar_jax.masks as masks_module

    save = masks_module._save

    def save_then_stop(*args):
        save(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(masks_module, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        learn_mask(model, data, checkpoint=path, **kw)
    monkeypatch.setattr(masks_module, "_save", save)
    resumed = learn_mask(model, data, checkpoint=path, **kw)
    np.testing.assert_array_equal(resumed.logits, whole.logits)
    np.testing.assert_array_equal(resumed.kl_history, whole.kl_history)
    with pytest.raises(ValueError, match="a checkpoint of another mask job"):
        learn_mask(model, data, checkpoint=path, **(kw | {"steps": 80}))


def test_bad_arguments_are_refused(planted):
    model, data, _ = planted
    with pytest.raises(ValueError, match="unknown mask method 'acdc'; choose from \\['edge-pruning', 'ugs'\\]"):
        learn_mask(model, data, method="acdc", target_edges=5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="target_edges"):
        learn_mask(model, data, target_edges=10_000, key=jax.random.key(0))
    with pytest.raises(ValueError, match="distinct"):
        learn_mask(model, data, target_edges=5, seeds=[1, 1], key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        learn_mask(model, data, target_edges=5)


def test_a_study_with_a_learned_mask_cell(hf_dirs, tmp_path):
    """A learned-mask cell beside an EAP-IG cell: its seeds are the replicates of its bootstrap
    files (their Jaccards recomputed here from the saved logits, ranked by α and pruned), the
    data replicates are trained on resampled inputs, the comparison with EAP-IG is on the held-out
    inputs, and the study-level analysis, the plan and the report take the cell as they are."""
    from mivar_jax.circuits.pruning import prune
    from mivar_jax.circuits.selection import topn
    from mivar_jax.study import Study
    from tests.test_study import _json, tiny_config

    cfg = tiny_config(
        hf_dirs["gpt2"][0],
        estimator={"methods": ["eap-ig-inputs", "edge-pruning"], "steps": [2], "batch_size": 4},
        masks={"seeds": 3, "replicates": 2, "steps": 30},
        stability={"curve": False, "faithfulness": [], "prompts_needed": False},
    )
    out = tmp_path / "run"
    results = Study(cfg).run(out, progress=False)
    mask_cell = next(c for c in cfg.cells() if c.method == "edge-pruning")
    folder = out / "cells" / mask_cell.id
    info, masks = _json(folder / "masks.json"), np.load(folder / "masks.npz")
    g = mv.load_model(hf_dirs["gpt2"][0]).graph
    logits = masks["seed_logits"]
    assert logits.shape == (3, g.n_edges) and masks["replicate_logits"].shape == (2, g.n_edges)
    n_discovery = len(_json(folder / "cell.json")["discovery_inputs"])
    assert (masks["replicate_weights"].sum(1) == n_discovery).all()  # multinomial counts of the inputs
    assert info["seeds"]["open_gates"] == (logits >= -BETA * np.log(ZETA / -GAMMA)).sum(1).tolist()  # P(open) ≥ ½
    boot = {(r["aggregation"], r["size"]): r for r in _json(folder / "bootstrap.json")}
    for n in cfg.circuits.sizes:
        kept = np.asarray(prune(g, topn(jnp.asarray(logits), n, absolute=False)[0])[0])
        jac = lambda a, b: (a & b).sum() / (a | b).sum() if (a | b).any() else 1.0  # noqa: E731 (two empty: 1)
        pairs = [jac(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :]]
        assert boot[("mean", n)]["mean_jaccard"] == pytest.approx(np.mean(pairs), rel=1e-6)
        assert boot[("mean", n)]["method"] == "seeds" and boot[("mean", n)]["n_replicates"] == 3
    c = info["compare"]
    assert c["inputs"] == "held-out" and len(c["mask_faithfulness"]) == 3 and 0 <= c["overlap_jaccard_mean"] <= 1
    assert info["data_to_data"]["method"] == "data-replicates" and info["data_to_data"]["n_replicates"] == 2
    from mivar_jax.cli import _summary

    _summary(results, str(out))  # the command's table: intervals undefined with 3 seeds print as –
    rows = {r["cell"] for r in results.rows}
    assert rows == {x.id for x in cfg.cells()}
    assert {r["n_replicates"] for r in results.rows if r["cell"] == mask_cell.id} == {3}  # its seeds
    assert "here B = 3 … 16)" in results.verdict  # the seeds of the mask cell, the bootstrap of the other
    assert "EAP-IG at n=20" in _json(folder / "cell.json")["headline"]
    decomposition = _json(out / "results" / "decomposition.json")
    assert "learned-mask cells" in decomposition["membership_nested"]["skipped"]
    assert (out / "report.html").stat().st_size > 10_000
    plan = mv.plan(cfg)
    row = next(r for r in plan.rows if r["cell"] == mask_cell.id)
    assert row["calls"] == (3 + 2) * 3 and row["seconds"] > 0


def test_seeds_spread_over_eight_devices_equal_one_device(planted, tmp_path):
    """Eight forced CPU devices, each training its block of the seeds (3 seeds: filled up to 8),
    give the one-device masks."""
    model, data, circuit = planted
    kw = dict(target_edges=int(circuit.sum()), steps=60, seeds=3, key=jax.random.key(4), progress=False)
    one = learn_mask(model, data, **kw)
    script = textwrap.dedent(f"""
        import jax, numpy as np
        assert jax.device_count() == 8
        from mivar_jax.masks import learn_mask
        from tests.test_masks import planted
        model, data, circuit = planted.__wrapped__()
        lm = learn_mask(model, data, target_edges=int(circuit.sum()), steps=60, seeds=3, key=jax.random.key(4),
                        progress=False)
        np.save({str(tmp_path / "logits.npy")!r}, lm.logits)
        np.save({str(tmp_path / "kl.npy")!r}, lm.kl_history)
        np.save({str(tmp_path / "masks.npy")!r}, lm.masks())
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600, cwd=root)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), one.logits, atol=1e-3)  # float32 rounding
    np.testing.assert_allclose(np.load(tmp_path / "kl.npy"), one.kl_history, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "masks.npy"), one.masks())
