"""The graph-form forward against an independent loop-based numpy implementation (tests/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models import EdgeMix, Replace, Taps, Window, forward, pad_batch
from mivar_jax.models.layers import position_ids
from mivar_jax.patching import first_changes, kv_caches, residual_states, slot_gradients
from tests import reference

CLEAN = ["When Mary and John went to the store, John gave a drink to", "The keys to the cabinet"]
CORRUPT = ["When Mary and John went to the store, Paul gave a drink to", "The key to the cabinets"]


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa-llama3"])
def setup(request, hf_dirs):
    model = mv.load_model(hf_dirs[request.param][0])
    tok = model.tokenizer
    clean_ids = [tok.encode(t) for t in CLEAN]
    corrupt_ids = [tok.encode(t) for t in CORRUPT]
    assert [len(x) for x in clean_ids] == [len(x) for x in corrupt_ids]
    clean = pad_batch(clean_ids, padding_side="left")
    corrupt = pad_batch(corrupt_ids, padding_side="left")
    corrupted_nodes = model.node_outputs(corrupt.tokens, corrupt.attention_mask)
    return model, clean, corrupt, corrupted_nodes


def _reference(model, batch, corrupted_nodes=None, mask_dense=None):
    g = model.graph
    params = jax.tree.map(np.asarray, model.params)
    corrupted = (
        None if corrupted_nodes is None else {n: np.asarray(corrupted_nodes[i]) for i, n in enumerate(g.src_names)}
    )
    edges = {}
    if mask_dense is not None:
        for s, d in zip(*np.nonzero(g.valid & (mask_dense != 1.0)), strict=True):
            edges[(g.src_names[s], g.dst_names[d])] = float(mask_dense[s, d])
    logits, nodes = reference.graph_forward(model.config, params, batch.tokens, batch.attention_mask, corrupted, edges)
    return logits, np.stack([nodes[n] for n in g.src_names])


def _close_on_real(a, b, mask, atol):
    real = np.asarray(mask, bool)
    diff = np.abs(np.asarray(a)[real] - np.asarray(b)[real]).max()
    assert diff <= atol, f"max diff {diff:.2e} > {atol}"


def test_reference_itself_matches_transformers(hf_dirs):
    """The numpy oracle is validated against transformers before it judges the kernel."""
    from tests.factory import hf_logits

    directory, torch_model = hf_dirs["llama-gqa-llama3"]
    model = mv.load_model(directory)
    batch = model.tokenize(CLEAN, padding_side="left")
    logits, _ = _reference(model, batch)
    _close_on_real(logits, hf_logits(torch_model, batch.tokens, batch.attention_mask), batch.attention_mask, 1e-4)


def test_all_ones_mask_reproduces_the_clean_forward(setup):
    model, clean, _, corrupted = setup
    plain = model(clean.tokens, clean.attention_mask)
    ones = jnp.ones((model.graph.n_src, model.graph.n_dst))
    mixed, nodes = model.forward(clean.tokens, clean.attention_mask, EdgeMix(ones, corrupted), nodes=True)
    residual, nodes_residual = model.forward(clean.tokens, clean.attention_mask, nodes=True)
    _close_on_real(mixed, plain, clean.attention_mask, 1e-5)
    _close_on_real(residual, plain, clean.attention_mask, 1e-5)
    np.testing.assert_allclose(nodes, nodes_residual, atol=1e-5)


def test_all_zeros_mask_reproduces_the_corrupted_forward(setup):
    model, clean, corrupt, corrupted = setup
    zeros = jnp.zeros(model.graph.n_edges)  # flat form
    mixed, _ = model.forward(clean.tokens, clean.attention_mask, EdgeMix(zeros, corrupted), nodes=True)
    _close_on_real(mixed, model(corrupt.tokens, corrupt.attention_mask), clean.attention_mask, 1e-5)


def test_node_outputs_sum_to_the_residual_stream(setup):
    """input + every head + every MLP (+ output biases) is the final residual stream."""
    model, clean, _, _ = setup
    _, nodes = model.forward(clean.tokens, clean.attention_mask, nodes=True)
    b_o = model.params["blocks"].get("b_o")
    total = nodes.sum(0) + (0 if b_o is None else b_o.sum(0))
    from mivar_jax.models.layers import unembed

    _close_on_real(
        unembed(model.config, model.params, total),
        model(clean.tokens, clean.attention_mask),
        clean.attention_mask,
        1e-4,
    )


def test_single_edges_match_the_reference(setup):
    model, clean, _, corrupted = setup
    g = model.graph
    rng = np.random.default_rng(0)
    edges = rng.choice(g.n_edges, size=4, replace=False).tolist() + [g.edge_index("input->logits"), g.n_edges - 1]
    for e in edges:
        dense = np.ones((g.n_src, g.n_dst), np.float32)
        dense[g.edge_src[e], g.edge_dst[e]] = 0.0
        ours, ours_nodes = model.forward(clean.tokens, clean.attention_mask, EdgeMix(dense, corrupted), nodes=True)
        ref, ref_nodes = _reference(model, clean, corrupted, dense)
        _close_on_real(ours, ref, clean.attention_mask, 2e-4)
        real = clean.attention_mask.astype(bool)
        assert np.abs(np.asarray(ours_nodes)[:, real] - ref_nodes[:, real]).max() <= 2e-4


@pytest.mark.parametrize("kind", ["binary", "real"])
def test_partial_masks_match_the_reference(setup, kind):
    model, clean, _, corrupted = setup
    g = model.graph
    rng = np.random.default_rng(1 if kind == "binary" else 2)
    flat = (
        (rng.random(g.n_edges) < 0.7).astype(np.float32)
        if kind == "binary"
        else rng.random(g.n_edges).astype(np.float32)
    )
    ours, _ = model.forward(clean.tokens, clean.attention_mask, EdgeMix(flat, corrupted), nodes=True)
    ref, _ = _reference(model, clean, corrupted, g.to_dense(flat, fill=1.0))
    _close_on_real(ours, ref, clean.attention_mask, 2e-4)
    assert (
        np.abs(np.asarray(ours) - np.asarray(model(clean.tokens, clean.attention_mask))).max() > 1e-3
    )  # the mask matters


def test_zero_and_mean_ablations_broadcast(setup):
    model, clean, _, corrupted = setup
    g = model.graph
    flat = (np.random.default_rng(3).random(g.n_edges) < 0.8).astype(np.float32)
    zeros = jnp.zeros((g.n_src, 1, 1, model.config.d_model))
    ours, _ = model.forward(clean.tokens, clean.attention_mask, EdgeMix(flat, zeros), nodes=True)
    ref, _ = _reference(model, clean, np.zeros_like(np.asarray(corrupted)), g.to_dense(flat, fill=1.0))
    _close_on_real(ours, ref, clean.attention_mask, 2e-4)
    mean = corrupted.mean(1, keepdims=True)  # [S, 1, P, D]
    ours, _ = model.forward(clean.tokens, clean.attention_mask, EdgeMix(flat, mean), nodes=True)
    ref, _ = _reference(model, clean, np.broadcast_to(np.asarray(mean), corrupted.shape), g.to_dense(flat, fill=1.0))
    _close_on_real(ours, ref, clean.attention_mask, 2e-4)


def test_logit_positions_select_the_same_numbers(setup):
    model, clean, _, corrupted = setup
    flat = (np.random.default_rng(4).random(model.graph.n_edges) < 0.5).astype(np.float32)
    full, _ = model.forward(clean.tokens, clean.attention_mask, EdgeMix(flat, corrupted), nodes=True)
    at, _ = model.forward(
        clean.tokens, clean.attention_mask, EdgeMix(flat, corrupted), logit_positions=clean.last, nodes=True
    )
    np.testing.assert_allclose(at, np.asarray(full)[np.arange(2), clean.last], atol=1e-5)


def test_vmap_over_masks_and_over_inputs(setup):
    model, clean, _, corrupted = setup
    cfg, params, g = model.config, model.params, model.graph
    tokens, attn = jnp.asarray(clean.tokens), jnp.asarray(clean.attention_mask)
    masks = jnp.asarray((np.random.default_rng(5).random((3, g.n_edges)) < 0.6).astype(np.float32))

    @jax.jit
    def run(mask):
        return forward(
            cfg, params, tokens, attn, EdgeMix(mask, corrupted), logit_positions=jnp.asarray(clean.last), nodes=True
        )[0]

    stacked = jax.vmap(run)(masks)
    for i in range(3):
        np.testing.assert_allclose(stacked[i], run(masks[i]), atol=1e-5)

    def one_input(tok, am, corr, last):
        out = forward(
            cfg, params, tok[None], am[None], EdgeMix(masks[0], corr[:, None]), logit_positions=last[None], nodes=True
        )
        return out[0][0]

    per_input = jax.jit(jax.vmap(one_input, in_axes=(0, 0, 1, 0)))(tokens, attn, corrupted, jnp.asarray(clean.last))
    np.testing.assert_allclose(per_input, run(masks[0]), atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_window_reproduces_the_full_mixing_forward(setup, padding_side):
    """Counterfactual patching computed on each input's window of positions (from its first
    difference to its answer; one start per input), earlier keys and values read from the clean
    run's caches: the same logits and, inside the windows, the same node outputs."""
    model, *_ = setup
    cfg, params, g = model.config, model.params, model.graph
    tok = model.tokenizer
    clean = pad_batch([tok.encode(t) for t in CLEAN], padding_side=padding_side)
    corrupt = pad_batch([tok.encode(t) for t in CORRUPT], padding_side=padding_side)
    tokens, attn, last = jnp.asarray(clean.tokens), jnp.asarray(clean.attention_mask), jnp.asarray(clean.last)
    corrupted = model.node_outputs(corrupt.tokens, corrupt.attention_mask)
    P = tokens.shape[1]
    first = first_changes(clean.tokens, corrupt.tokens, clean.attention_mask, clean.last)
    width = int((clean.last - first + 1).max())
    starts = np.minimum(first, P - width)
    assert 0 < width < P
    if padding_side == "right":
        assert len(set(starts.tolist())) == 2  # one start per input
    _, clean_nodes = forward(cfg, params, tokens, attn, nodes=True)
    pre, _, _ = residual_states(cfg, params, clean_nodes)
    keys, values = kv_caches(cfg, params, pre, position_ids(attn))
    window_of = jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, width, axis=1), in_axes=(1, 0), out_axes=1)
    real = np.asarray(window_of(attn[None, :, :, None], jnp.asarray(starts)))[0, :, :, 0] > 0
    masks = (np.random.default_rng(8).random((2, g.n_edges)) < 0.6).astype(np.float32)
    run = jax.jit(
        lambda m, s, z: forward(
            cfg, params, tokens, attn, (EdgeMix(m, z), Window(s, keys, values, width)), logit_positions=last, nodes=True
        )
    )
    for mask in masks:
        full, nodes_full = forward(
            cfg, params, tokens, attn, EdgeMix(mask, corrupted), logit_positions=last, nodes=True
        )
        windowed, nodes_win = run(mask, jnp.asarray(starts, jnp.int32), window_of(corrupted, jnp.asarray(starts)))
        np.testing.assert_allclose(windowed, full, atol=1e-4, rtol=1e-4)
        expected = np.asarray(window_of(nodes_full, jnp.asarray(starts)))
        np.testing.assert_allclose(np.asarray(nodes_win)[:, real], expected[:, real], atol=1e-4)
    plain = np.asarray(forward(cfg, params, tokens, attn, nodes=True)[0])[np.arange(2), clean.last]
    assert np.abs(np.asarray(full) - plain).max() > 1e-3  # the patches matter


def test_mask_gradient_is_the_eap_product_of_tap_gradients(setup):
    """∂m/∂M[u,v] at M = 1 equals Σ (z_u − z̃_u)·∂m/∂in_v, with ∂m/∂in_v from the taps — two code paths."""
    model, clean, _, corrupted = setup
    cfg, params, g = model.config, model.params, model.graph
    tokens, attn, last = jnp.asarray(clean.tokens), jnp.asarray(clean.attention_mask), jnp.asarray(clean.last)
    target = jnp.asarray([3, 7])

    def metric(logits):
        return jnp.take_along_axis(logits, target[:, None], 1).sum()

    @jax.jit
    def by_mask(mask):
        return metric(forward(cfg, params, tokens, attn, EdgeMix(mask, corrupted), logit_positions=last, nodes=True)[0])

    def by_taps(taps):
        logits, nodes = forward(cfg, params, tokens, attn, Taps(taps), logit_positions=last, nodes=True)
        return metric(logits), nodes

    grad_mask = jax.jit(jax.grad(by_mask))(jnp.ones(g.n_edges))
    N, P, D = tokens.shape[0], tokens.shape[1], cfg.d_model
    grad_taps, clean_nodes = jax.jit(jax.grad(by_taps, has_aux=True))(jnp.zeros((g.n_dst, N, P, D)))
    delta = clean_nodes - corrupted  # [S, N, P, D]
    eap = jnp.einsum("snpd,tnpd->st", delta, grad_taps)
    expected = np.asarray(g.to_flat(eap))
    np.testing.assert_allclose(grad_mask, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    # and a finite difference on the largest-gradient edge
    e = int(np.argmax(np.abs(expected)))
    eps = 1e-2
    bump = jnp.ones(g.n_edges).at[e].add(eps)
    dip = jnp.ones(g.n_edges).at[e].add(-eps)
    fd = (by_mask(bump) - by_mask(dip)) / (2 * eps)
    np.testing.assert_allclose(fd, grad_mask[e], rtol=2e-2)


@pytest.mark.parametrize("with_replace", [False, True])
def test_slot_gradients_equal_the_input_taps_gradients(setup, with_replace):
    """The fast path (taps on the q/k/v projections, pulled back through W and the input norm)
    gives every slot the gradient a tap at its input gets in the per-slot graph form."""
    model, clean, _, corrupted = setup
    cfg, params, g = model.config, model.params, model.graph
    tokens, attn, last = jnp.asarray(clean.tokens), jnp.asarray(clean.attention_mask), jnp.asarray(clean.last)
    N, P, D = tokens.shape[0], tokens.shape[1], cfg.d_model
    target = jnp.asarray([3, 7])[:N]
    replace = None
    if with_replace:  # blend two nodes of layer 1 half-way to the corrupted values, fix the input node
        w = np.zeros(g.n_src, np.float32)
        w[[0, 1 + (cfg.n_heads + 1), 1 + (cfg.n_heads + 1) + cfg.n_heads]] = [1.0, 0.5, 0.5]
        replace = Replace(corrupted, jnp.asarray(w))

    def objective(logits):
        return (jnp.take_along_axis(logits, target[:, None], 1) * jnp.asarray([1.0, -2.0])[:N, None]).sum()

    def by_taps(taps):
        ivs = Taps(taps) if replace is None else (replace, Taps(taps))
        logits, nodes = forward(cfg, params, tokens, attn, ivs, logit_positions=last, nodes=True)
        return objective(logits), nodes

    expected, nodes_expected = jax.jit(jax.grad(by_taps, has_aux=True))(jnp.zeros((g.n_dst, N, P, D)))
    fast = jax.jit(lambda: slot_gradients(cfg, params, tokens, attn, objective, logit_positions=last, replace=replace))
    grads, nodes = fast()
    scale = float(jnp.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(grads, expected, atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(nodes, nodes_expected, atol=1e-5)
    if not with_replace:
        summed, none = jax.jit(
            lambda: slot_gradients(cfg, params, tokens, attn, objective, logit_positions=last, with_nodes=False)
        )()
        assert none is None
        np.testing.assert_allclose(summed, expected, atol=1e-5 * scale, rtol=1e-4)


def test_bad_inputs_are_clear_errors(setup):
    model, clean, _, corrupted = setup
    g = model.graph
    with pytest.raises(ValueError, match="same length"):
        model.forward(
            clean.tokens, clean.attention_mask, EdgeMix(jnp.ones(g.n_edges), corrupted[:, :, :-1]), nodes=True
        )
    with pytest.raises(ValueError, match="edge_mask must be"):
        model.forward(clean.tokens, clean.attention_mask, EdgeMix(jnp.ones(7), corrupted), nodes=True)
    with pytest.raises(TypeError, match="corrupted"):  # an edge mix without reference values cannot be built
        EdgeMix(jnp.ones(g.n_edges))
    with pytest.raises(ValueError, match="taps must have shape"):
        model.forward(clean.tokens, clean.attention_mask, Taps(jnp.zeros((3, 2, 2, 2))), nodes=True)
    with pytest.raises(ValueError, match="context length"):
        model(np.zeros((1, model.config.n_ctx + 1), np.int32))
    with pytest.raises(ValueError, match="ids must lie in"):
        model(np.array([[model.config.vocab_size]]))
    with pytest.raises(ValueError, match="they must match"):
        model(clean.tokens, clean.attention_mask[:, :-1])
    from mivar_jax.models.transformer import trace

    x1 = jnp.zeros((*np.shape(clean.tokens), model.config.d_model))
    with pytest.raises(ValueError, match="start_at runs the default residual stream"):  # a run from layer 1
        trace(model.config, model.params, clean.tokens, clean.attention_mask, EdgeMix(jnp.ones(g.n_edges), corrupted),
              start_at=(1, x1))  # fmt: skip
    with pytest.raises(ValueError, match="start_at runs the default residual stream"):
        trace(model.config, model.params, clean.tokens, clean.attention_mask, record=("nodes",), start_at=(1, x1))
