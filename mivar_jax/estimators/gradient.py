"""Gradient estimators of edge effects, per input.

Notation: z_u the clean run's node outputs, z̃_u the reference values (corrupted run, zeros or
means), Δz_u = z̃_u − z_u, g_v = ∂metric/∂in_v (the gradient at destination slot v's input, read off
an additive tap). Every score estimates Δmetric = metric(edge patched to z̃) − metric(clean) and is
a sum over positions and width of Δz_u ⊙ (some average of g_v):

- ``eap``: g_v at the clean run.
- ``eap-ig-inputs`` (m steps): g_v averaged over runs whose input embeddings are interpolated,
  x̃ + α_k (x − x̃). Conventions for α_k: ``reference`` k/m for k = 0…m−1 (EAP-IG's: starts at the
  corrupted input, omits the clean one), ``right`` (k+1)/m, ``midpoint`` (k+½)/m.
- ``eap-ig-activations`` (m steps): node outputs are interpolated instead, one group at a time
  (the input; each layer's heads; each MLP), z̃ + α (z − z̃) with α = k/m, k = 1…m (EAP-IG's
  convention). ``pooling="reference"`` (default) averages every run's gradient into every edge,
  as the reference EAP-IG library accumulates: score = Δz_u · Σ_runs Σ_k g_v / (m · groups).
  ``pooling="source"`` gives edge u→v only the gradients of the runs that interpolated u's own
  group: integrated gradients along u's activation. ``pooling="reference-tl"`` reproduces the
  library's numbers as computed through TransformerLens, artefact included: its run that
  interpolates the input replaces ``hook_embed`` by a tensor without a gradient path, so on models
  that add nothing learned before layer 0 (no learned position embeddings: Llama, Qwen2, …) the
  backward hooks at layer 0's q/k/v inputs never fire and that run contributes zero there (edges
  input → a0.h·<q|k|v> score lower, e.g. ×0.75 at m = 1 on a tiny Llama). The engine's default
  computes the true gradient there; on GPT-2 "reference" and "reference-tl" agree.
- ``clean-corrupted``: g_v averaged over the clean run and the run on the reference input x̃.
- ``ceap`` (conductance, Wu, Tonin & Cevher): along inputs x_k = x + (k/m)(x̃ − x), k = 0…m (clean
  to corrupted), Σ_k (z_u^(k+1) − z_u^(k)) · g_v(x_k). The differences telescope to the run on x̃;
  with m = 1 and counterfactual patching this is EAP.
With zero or mean ablation the input-path methods interpolate towards the ablated input node.

Each method is one kernel ``(cfg, options, params, batch, clean_nodes, ref_nodes, ref_input,
ref_is_run) → [N, S, T]`` registered with its cost; ``run_dense`` is their driver.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from mivar_jax import engine
from mivar_jax.engine import EDGES, INPUTS
from mivar_jax.estimators.registry import Estimator, Options, register
from mivar_jax.models.config import ModelConfig
from mivar_jax.models.interventions import Replace
from mivar_jax.models.transformer import forward
from mivar_jax.patching import dataset_means, reference_values, run_nodes, slot_gradients
from mivar_jax.patching.gradients import stream_pullback, suffix_gradients
from mivar_jax.sharding import Spec
from mivar_jax.tasks.data import TaskBatch
from mivar_jax.tasks.metrics import get_metric

IG_CONVENTIONS = ("reference", "right", "midpoint")
POOLINGS = ("reference", "reference-tl", "source")


def ig_alphas(steps: int, convention: str) -> np.ndarray:
    k = np.arange(steps, dtype=np.float64)
    offsets = {"reference": 0.0, "right": 1.0, "midpoint": 0.5}
    if convention not in offsets:
        raise ValueError(f"unknown IG convention {convention!r}; choose from {list(IG_CONVENTIONS)}")
    return ((k + offsets[convention]) / steps).astype(np.float32)


def _objective(b: TaskBatch, metric: str):
    """logits at the answer positions [N, V] → Σ_n metric: what every gradient estimator differentiates."""
    return lambda logits: get_metric(metric)(logits, b.correct, b.incorrect).sum()


def _slot_grads(cfg, params, b: TaskBatch, metric: str, input_embeds, replace=None, with_nodes=True):
    """(∂Σmetric/∂in_v for every slot [T, N, P, D], node outputs [S, N, P, D] or None) of one run
    on the clean tokens (``slot_gradients``: one forward+backward)."""
    return slot_gradients(
        cfg, params, b.clean, b.attention_mask, _objective(b, metric), input_embeds=input_embeds,
        logit_positions=b.answer_pos, replace=replace, with_nodes=with_nodes,
    )  # fmt: skip


def _product(delta_SxNxPxD, grad_TxNxPxD) -> Float[Array, "N S T"]:
    """Per-input Σ_{p,d} Δz_u ⊙ g_v for every (source, slot) pair."""
    return jnp.einsum("snpd,tnpd->nst", delta_SxNxPxD, grad_TxNxPxD, preferred_element_type=jnp.float32)


# ================================================================================ the kernels
def eap(cfg, o: Options, params, b, clean_nodes, ref_nodes, ref_input, ref_is_run):
    grad = _slot_grads(cfg, params, b, o.metric, clean_nodes[0], with_nodes=False)[0]
    return _product(ref_nodes - clean_nodes, grad)


def clean_corrupted(cfg, o: Options, params, b, clean_nodes, ref_nodes, ref_input, ref_is_run):
    grad = functools.partial(_slot_grads, cfg, params, b, o.metric, with_nodes=False)
    return _product(ref_nodes - clean_nodes, (grad(clean_nodes[0])[0] + grad(ref_input)[0]) / 2)


def eap_ig_inputs(cfg, o: Options, params, b, clean_nodes, ref_nodes, ref_input, ref_is_run):
    x, delta = clean_nodes[0], ref_nodes - clean_nodes
    grad = functools.partial(_slot_grads, cfg, params, b, o.metric)
    alphas = ig_alphas(o.steps, o.ig_convention)
    path = lambda alpha: ref_input + alpha * (x - ref_input)

    def step(acc, alpha):
        return acc + grad(path(alpha), with_nodes=False)[0], None

    # the first step starts the sum (no zero-filled start); at α = 0 it is the reference run
    # (``ref_is_run``: ``ref_nodes`` are a run on ``ref_input``, so the caller's run is dead code)
    if ref_is_run and alphas[0] == 0:
        first, ref_run_nodes = grad(ref_input)
        delta = ref_run_nodes - clean_nodes
    else:
        first = grad(path(alphas[0]), with_nodes=False)[0]
    total, _ = jax.lax.scan(step, first, jnp.asarray(alphas[1:]))
    return _product(delta, total) / o.steps


def ceap(cfg, o: Options, params, b, clean_nodes, ref_nodes, ref_input, ref_is_run):
    x, steps = clean_nodes[0], o.steps
    grad = functools.partial(_slot_grads, cfg, params, b, o.metric)
    path = lambda k: x + (k / steps) * (ref_input - x)
    g0, z0 = grad(path(0.0))

    def step(carry, k):
        z_prev, g_prev, acc = carry
        g_k, z_k = grad(path(k))
        return (z_k, g_k, acc + _product(z_k - z_prev, g_prev)), None

    acc0 = jnp.zeros((x.shape[0], cfg.graph.n_src, cfg.graph.n_dst), jnp.float32)
    (z_last, g_last, acc), _ = jax.lax.scan(step, (z0, g0, acc0), jnp.arange(1, steps, dtype=jnp.float32))
    _, z_end = forward(
        cfg,
        params,
        b.clean,
        b.attention_mask,
        input_embeds=path(float(steps)),
        logit_positions=b.answer_pos,
        nodes=True,
    )
    return acc + _product(z_end - z_last, g_last)


def eap_ig_activations(cfg, o: Options, params, b, clean_nodes, ref_nodes, ref_input, ref_is_run):
    """Integrated gradients on node outputs, one group (input / a layer's heads / an MLP) at a time.

    The layers before a fixed group are the clean run's, so its runs start from the clean stream at
    the first layer of the group's chunk of about √L layers (``suffix_gradients``; one compiled
    program per chunk). The earlier slots' gradients are linear in the cotangent at that stream:
    with ``pooling="reference"`` the cotangents are summed over the runs and pulled back once
    (``stream_pullback``); ``pooling="source"`` never reads slots before a group. The sums of whole
    runs, computing about 0.55–0.65 of their layers (measured: 0.75× their time on CPU)."""
    g = cfg.graph
    L, H, S, T, steps, pooling = cfg.n_layers, cfg.n_heads, g.n_src, g.n_dst, o.steps, o.pooling
    delta = ref_nodes - clean_nodes
    pre_LxNxPxD, pullback = stream_pullback(cfg, params, b.clean, b.attention_mask, input_embeds=clean_nodes[0])
    # Groups as blocks of H+1 source rows starting at `start`, with a row mask and their layer.
    starts, masks, layers = [0], [[1] + [0] * H], [0]
    for layer in range(L):
        first = 1 + layer * (H + 1)
        starts += [first, first + H]
        masks += [[1] * H + [0], [1] + [0] * H]
        layers += [layer, layer]
    # slots each group's run adds to the pooled gradient (reference-tl: the library's artefact)
    keep_GxT = np.ones((len(starts), T), np.float32)
    if pooling == "reference-tl" and cfg.positional != "learned":
        keep_GxT[0, : 3 * H] = 0.0  # the input run: no gradient reaches layer 0's q/k/v inputs
    delta_padded = jnp.concatenate([delta, jnp.zeros((H,) + delta.shape[1:], delta.dtype)])
    alphas = jnp.arange(1, steps + 1, dtype=clean_nodes.dtype) / steps
    N, zeros_T = clean_nodes.shape[1], jnp.zeros((T,) + clean_nodes.shape[1:], clean_nodes.dtype)
    chunk = max(1, round(L**0.5))
    first_layers = np.asarray(layers) // chunk * chunk

    def chunk_runs(first_layer, carry, xs):
        """Every run of the groups ``xs`` from the clean stream before ``first_layer`` (the input
        group's: whole runs): the carry updated, and Σ ∂/∂stream there."""
        start_at = None if first_layer == 0 else (first_layer, pre_LxNxPxD[first_layer])
        t0 = first_layer * g.slots_per_layer  # the runs' first slot

        def group(carry, xs):
            start, mask, keep_T = xs
            weights = jnp.zeros(S + H, clean_nodes.dtype).at[start + jnp.arange(H + 1)].set(mask)[:S]

            def step(acc, alpha):
                replace = Replace(ref_nodes + alpha * (clean_nodes - ref_nodes), weights)
                if start_at is None:
                    slots = _slot_grads(cfg, params, b, o.metric, clean_nodes[0], replace, with_nodes=False)[0]
                    return (acc[0] + slots, acc[1]), None
                slots, d_stream = suffix_gradients(
                    cfg, params, b.clean, b.attention_mask, _objective(b, o.metric), start_at, input_embeds=clean_nodes[0],
                    logit_positions=b.answer_pos, replace=replace,
                )  # fmt: skip
                return (acc[0] + slots, acc[1] + d_stream), None

            (summed, d_stream), _ = jax.lax.scan(step, (zeros_T[t0:], jnp.zeros_like(pre_LxNxPxD[0])), alphas)
            if pooling != "source":  # every run's gradient pooled into every edge
                return (carry[0] + summed * keep_T[t0:, None, None, None], carry[1] + d_stream), None
            rows = jax.lax.dynamic_slice_in_dim(delta_padded, start, H + 1) * mask[:, None, None, None]
            block = _product(rows, summed / steps)  # [N, H+1, Tl]: the group's own edges
            current = jax.lax.dynamic_slice(carry[0], (0, start, t0), block.shape)
            return (jax.lax.dynamic_update_slice(carry[0], current + block, (0, start, t0)), carry[1]), None

        acc = carry[t0:] if pooling != "source" else carry
        (acc, d_stream), _ = jax.lax.scan(group, (acc, jnp.zeros_like(pre_LxNxPxD[0])), xs)
        return (carry.at[t0:].set(acc) if pooling != "source" else acc), d_stream

    carry = zeros_T if pooling != "source" else jnp.zeros((N, S + H, T), jnp.float32)
    cotangent_L = jnp.zeros_like(pre_LxNxPxD)
    for first_layer in np.unique(first_layers):
        at = np.flatnonzero(first_layers == first_layer)
        xs = (jnp.asarray(np.asarray(starts)[at]), jnp.asarray(np.asarray(masks)[at], clean_nodes.dtype),
              jnp.asarray(keep_GxT[at], clean_nodes.dtype))  # fmt: skip
        carry, d_stream = chunk_runs(int(first_layer), carry, xs)
        cotangent_L = cotangent_L.at[first_layer].add(d_stream)
    if pooling != "source":
        return _product(delta, (carry + pullback(cotangent_L)) / (steps * len(starts)))
    return carry[:, :S]


def bytes_per_input(cfg: ModelConfig, n_positions: int, gradient_sets: int = 3) -> int:
    """Working memory of one input in a gradient kernel: ``gradient_sets`` slot-gradient-sized
    arrays [T, P, D] live at once (a run's gradients, the sum over runs, the previous step's), three
    node-output sets [S, P, D] (clean, reference, their difference), what one forward+backward keeps
    per layer, and the answer position's logits and their gradient. An upper bound of the growth
    per input of XLA's own buffer assignment (``memory_analysis``), within a factor of about 3 for
    every method (tested)."""
    g = cfg.graph
    D, F, H, L, P = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.n_layers, n_positions
    per_layer = 6 * D + 3 * F + 2 * H * P  # residual, norms, q/k/v, MLP hidden, attention pattern
    return 4 * P * (gradient_sets * g.n_dst * D + 3 * g.n_src * D + L * per_layer) + 4 * 2 * cfg.vocab_size


# ================================================================================ the driver
@functools.lru_cache(maxsize=32)
def _dense_kernel(cfg, estimator: Estimator, o: Options, mesh):
    g = cfg.graph
    edge_src, edge_dst = jnp.asarray(g.edge_src), jnp.asarray(g.edge_dst)
    valid = jnp.asarray(g.valid)

    def kernel(params, b: TaskBatch, noise, noise_seed, means):
        ref_nodes, ref_input = reference_values(cfg, params, b, o.ablation, noise, noise_seed, means)
        clean_nodes, clean_metric = run_nodes(cfg, params, b, o.metric)
        dense = estimator.kernel(cfg, o, params, b, clean_nodes, ref_nodes, ref_input, o.ablation == "patch")
        items = dense[:, edge_src, edge_dst] if o.level == "edge" else jnp.where(valid, dense, 0).sum(-1)
        return items, clean_metric

    rows = Spec((EDGES, INPUTS))
    batch = TaskBatch(*(rows for _ in TaskBatch._fields))
    return engine.kernel(kernel, mesh, (Spec(), batch, Spec(), Spec(), Spec()), (rows, rows))


def batching(cfg, estimator: Estimator, n_inputs: int, n_positions: int, res: engine.Resources) -> tuple[int, int]:
    """(inputs per device and call, calls) of a dense estimator's job: the fewest calls of equal size
    within ``res.batch_size`` or the memory model; the same on any number of devices."""
    fit = res.batch_size or engine.fit(
        res.memory_budget, estimator.bytes_per_input(cfg, n_positions), cap=32, what=f"input of {n_positions} positions"
    )
    return engine.even_chunks(n_inputs, fit, bucketed=False)


def run_dense(model, data, o: Options, res: engine.Resources, estimator: Estimator, subset, progress, sink):
    """Per-input scores of a dense estimator and the clean metric into ``sink``: batches of inputs,
    every edge (or node) at once (the batches ``sink`` holds are skipped)."""
    cfg = model.config
    local = batching(cfg, estimator, len(data), data.n_positions, res)[0]
    means = dataset_means(model, data, local, o.ablation)
    kernel = _dense_kernel(cfg, estimator, o, res.mesh)
    params = engine.on_mesh(model.params, res.mesh)
    for _, b, rows in engine.batches(data, res, local, skip=sink.done):
        items, clean_metric = kernel(params, b, data.noise, data.noise_seed, means)
        sink.put(rows, np.asarray(items)[: len(rows)], np.asarray(clean_metric)[: len(rows)])
        if progress is not None:
            progress(len(rows))


for _name, _kernel, _options, _sets in (  # gradient sets: what each kernel holds at once
    ("eap", eap, (), 2),
    ("eap-ig-inputs", eap_ig_inputs, ("steps", "ig_convention"), 3),
    ("eap-ig-activations", eap_ig_activations, ("steps", "pooling"), 5),
    ("clean-corrupted", clean_corrupted, (), 4),
    ("ceap", ceap, ("steps",), 4),
):
    _cost = functools.partial(bytes_per_input, gradient_sets=_sets)
    register(Estimator(_name, run_dense, _kernel, _cost, _options))
