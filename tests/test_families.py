"""The architectures beyond GPT-2 and Llama on the one block: Qwen3 (QK-norm, sliding windows on some
layers), Mistral (sliding windows), Phi-3 (fused projections, partial rotary), GPT-NeoX / Pythia
(parallel attention and MLP, partial rotary, fused per-head qkv), Gemma 2/3 (norms after the
sublayers, soft-capped logits, GeGLU, scaled embeddings, local RoPE base) and OLMo 2 (norms only
after the sublayers, QK-norm over all heads), each a random-initialised
transformers checkpoint read through the real loading path. Logits parity with transformers is in
test_hf_parity.py; here: the numpy oracle against transformers, the graph form and exact patching
against the oracle (windows crossing a sliding-window span included), the parallel edge rule, EAP
= exact where the metric is linear, and every estimator, circuit evaluation and a tiny study."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models import EdgeMix, forward
from mivar_jax.patching import slot_gradients
from tests import reference
from tests.factory import hf_logits
from tests.test_estimators import _affine_norms

FAMILIES = ["qwen3-sliding", "mistral", "phi3", "pythia", "neox-sequential", "gemma2", "gemma3", "olmo2"]
PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The keys to the cabinet"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, hf_dirs):
    directory, torch_model = hf_dirs[request.param]
    return request.param, mv.load_model(directory), torch_model


def _oracle(model, batch, corrupted=None, dense=None):
    g = model.graph
    edges = {}
    if dense is not None:
        for s, d in zip(*np.nonzero(g.valid & (dense != 1.0)), strict=True):
            edges[(g.src_names[s], g.dst_names[d])] = float(dense[s, d])
    corrupted = None if corrupted is None else {n: np.asarray(corrupted[i]) for i, n in enumerate(g.src_names)}
    params = jax.tree.map(np.asarray, model.params)
    return reference.graph_forward(model.config, params, batch.tokens, batch.attention_mask, corrupted, edges)[0]


def test_configs_carry_each_familys_features(family):
    name, model, _ = family
    cfg = model.config
    expected = {
        "qwen3-sliding": dict(qk_norm="head", windows=(0, 2), parallel_attn_mlp=False),
        "mistral": dict(qk_norm="", windows=(3, 3), parallel_attn_mlp=False),
        "phi3": dict(qk_norm="", windows=(), parallel_attn_mlp=False),
        "pythia": dict(qk_norm="", windows=(), parallel_attn_mlp=True),
        "neox-sequential": dict(qk_norm="", windows=(), parallel_attn_mlp=False),
        "gemma2": dict(qk_norm="", windows=(3, 0), post_norms=True, attn_softcap=0.5, logit_softcap=1.0),
        "gemma3": dict(qk_norm="head", windows=(3, 0), post_norms=True, attn_softcap=0.0, attn_scale=0.25),
        "olmo2": dict(qk_norm="all", pre_norms=False, post_norms=True, windows=(), tied_embeddings=False),
    }[name]
    assert {k: getattr(cfg, k) for k in expected} == expected
    rotary = 2 * len(cfg.rope_inv_freq)
    assert rotary == {"phi3": 4, "pythia": 4, "neox-sequential": 2}.get(name, cfg.d_head)
    # the edge rule of the layout: a parallel block's MLP reads none of its own layer's heads
    L, H = cfg.n_layers, cfg.n_heads
    same_layer = 0 if cfg.parallel_attn_mlp else L * H
    sequential = mv.Graph(L, H)
    assert model.graph.parallel_attn_mlp == cfg.parallel_attn_mlp
    assert model.graph.n_edges == sequential.n_edges - L * H + same_layer


def test_the_oracle_matches_transformers(family):
    """tests/reference.py (loops, float64) is checked against transformers before it judges the engine."""
    _, model, torch_model = family
    batch = model.tokenize(PROMPTS, padding_side="left")
    ours = _oracle(model, batch)
    real = batch.attention_mask.astype(bool)
    assert np.abs(ours[real] - hf_logits(torch_model, batch.tokens, batch.attention_mask)[real]).max() <= 1e-4


def test_graph_form_matches_the_oracle(family):
    _, model, _ = family
    g = model.graph
    clean = model.tokenize(PROMPTS[0])
    corrupt = model.tokenize(PROMPTS[0].replace("John gave", "Paul gave"))
    assert clean.tokens.shape == corrupt.tokens.shape
    corrupted = model.node_outputs(corrupt.tokens)
    plain = np.asarray(model(clean.tokens))
    ones = np.asarray(model.forward(clean.tokens, None, EdgeMix(np.ones(g.n_edges, np.float32), corrupted)))
    np.testing.assert_allclose(ones, plain, atol=1e-5)
    mask = (np.random.default_rng(0).random(g.n_edges) < 0.6).astype(np.float32)
    ours = np.asarray(model.forward(clean.tokens, None, EdgeMix(mask, corrupted)))
    oracle = _oracle(model, clean, corrupted, g.to_dense(mask, fill=1.0))
    assert np.abs(ours - oracle).max() <= 2e-4
    assert np.abs(ours - plain).max() > 1e-3  # the mask matters


def test_slot_gradients_are_the_graph_forms_mask_gradient(family):
    """The gradients every EAP-style estimator uses (``slot_gradients``: projection taps pulled back
    through W and the input norm, or input taps under OLMo 2's all-head QK-norm) give, contracted
    with Δz, ∂objective/∂M of the graph form for every edge (autodiff of EdgeMix: another path)."""
    _, model, _ = family
    cfg, params, g = model.config, model.params, model.graph
    clean = model.tokenize(PROMPTS[0])
    corrupted = model.node_outputs(model.tokenize(PROMPTS[0].replace("John gave", "Paul gave")).tokens)
    tokens, mask, last = (jnp.asarray(a) for a in (clean.tokens, clean.attention_mask, clean.last))

    def objective(logits):
        return logits[:, 3].sum() - 2 * logits[:, 7].sum()

    by_mask = lambda m: objective(forward(cfg, params, tokens, mask, EdgeMix(m, corrupted), logit_positions=last))
    expected = np.asarray(jax.jit(jax.grad(by_mask))(jnp.ones(g.n_edges)))
    grads, nodes = jax.jit(lambda: slot_gradients(cfg, params, tokens, mask, objective, logit_positions=last))()
    eap = g.to_flat(np.einsum("snpd,tnpd->st", np.asarray(nodes - corrupted), np.asarray(grads)))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(eap, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_a_run_from_a_layer_plus_the_pulled_back_stream_is_the_whole_run(family):
    """EAP-IG-activations' split (``suffix_gradients`` from the clean run's stream before ``layer``,
    and ``stream_pullback`` of its cotangent there) gives the whole run's logits and slot gradients
    (``slot_gradients``), with the heads of the last layer fixed to other values (``Replace``)."""
    from mivar_jax.models import Replace
    from mivar_jax.models.transformer import trace
    from mivar_jax.patching.gradients import stream_pullback, suffix_gradients

    _, model, _ = family
    cfg, params, g = model.config, model.params, model.graph
    layer = cfg.n_layers - 1
    assert layer >= 1
    clean = model.tokenize(PROMPTS[0])
    corrupted = model.node_outputs(model.tokenize(PROMPTS[0].replace("John gave", "Paul gave")).tokens)
    tokens, mask, last = (jnp.asarray(a) for a in (clean.tokens, clean.attention_mask, clean.last))
    heads = 1 + layer * (cfg.n_heads + 1) + np.arange(cfg.n_heads)
    replace = Replace(corrupted, jnp.zeros(g.n_src).at[heads].set(0.7))

    def objective(logits):
        return logits[:, 3].sum() - 2 * logits[:, 7].sum()

    def split():
        pre, pullback = stream_pullback(cfg, params, tokens, mask)
        start = (layer, pre[layer])
        after, d_pre = suffix_gradients(
            cfg, params, tokens, mask, objective, start, logit_positions=last, replace=replace
        )
        run = trace(cfg, params, tokens, mask, replace, logit_positions=last, start_at=start)
        return (
            after,
            pullback(jnp.zeros_like(pre).at[layer].set(d_pre)),
            d_pre,
            mv.models.layers.unembed(cfg, params, run.final),
        )

    after, before, d_pre, logits = (np.asarray(a) for a in jax.jit(split)())
    whole = lambda: slot_gradients(cfg, params, tokens, mask, objective, logit_positions=last, replace=replace)[0]
    expected = np.asarray(jax.jit(whole)())
    plain = np.asarray(forward(cfg, params, tokens, mask, replace, logit_positions=last))
    t0 = layer * g.slots_per_layer  # the run's first slot
    assert after.shape[0] == g.n_dst - t0 and np.abs(before[t0:]).max() == 0
    assert np.abs(d_pre).max() > 1e-3 and np.abs(before).max() > 1e-3  # earlier slots: from the pullback
    scale = np.abs(expected).max()
    np.testing.assert_allclose(before[:t0], expected[:t0], rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(after, expected[t0:], rtol=1e-3, atol=1e-5 * scale)
    np.testing.assert_allclose(logits, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())


def test_eap_equals_exact_where_the_metric_is_linear(hf_dirs):
    model = mv.load_model(hf_dirs["pythia"][0])
    linear = _affine_norms(model)
    data = mv.tasks.make("ioi", model, n=4, seed=1)
    into_logits = model.graph.edge_dst == model.graph.n_dst - 1
    exact = mv.attribute(linear, data, method="exact", progress=False).per_input[:, into_logits]
    eap = mv.attribute(linear, data, method="eap", progress=False).per_input[:, into_logits]
    assert np.abs(exact).max() > 1e-3
    np.testing.assert_allclose(eap, exact, rtol=1e-3, atol=1e-5 * np.abs(exact).max())
