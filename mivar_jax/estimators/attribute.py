"""``attribute``: per-input scores of every edge or node, by any estimator."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mivar_jax._checks import check_int, mib
from mivar_jax._progress import progress_bar
from mivar_jax.estimators.common import check_ablation, dataset_means, finite_or_raise, reference_values, run_nodes
from mivar_jax.estimators.exact import DEFAULT_MEMORY_BUDGET, exact_scores
from mivar_jax.estimators.gradient import GRADIENT_METHODS, IG_CONVENTIONS, POOLINGS, check_steps, gradient_scores
from mivar_jax.estimators.scores import Scores
from mivar_jax.models.config import ModelConfig
from mivar_jax.sharding import EDGES, INPUTS, P, make_mesh, spmd
from mivar_jax.tasks.data import TaskBatch, TaskData, check_for_model

METHODS = ("exact",) + GRADIENT_METHODS
LEVELS = ("edge", "node")


def attribute(
    model,
    data: TaskData,
    method: str = "eap-ig-inputs",
    *,
    level: str = "edge",
    steps: int = 5,
    ablation: str = "patch",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    mesh: Mesh | None = None,
    ig_convention: str = "reference",
    pooling: str = "reference",
    subset=None,
    progress: bool = True,
) -> Scores:
    """Per-input scores [N, E] (edges) or [N, S] (nodes) of ``data``'s metric on ``model``.

    ``method``: ``exact`` | ``eap`` | ``eap-ig-inputs`` | ``eap-ig-activations`` |
    ``clean-corrupted`` | ``ceap`` (definitions: ``estimators.exact``, ``estimators.gradient``).
    ``steps``: integration steps m of the IG-type methods (default 5; the reference library uses 30).
    ``ablation``: ``patch`` (the corrupted prompts, with the dataset's counterfactual noise),
    ``zero``, or ``mean`` (each node's clean output averaged over the dataset's real positions).
    ``batch_size`` (inputs per device) and ``memory_budget`` (bytes per device, default 2 GiB) size
    the work; ``mesh`` (axes ``edges``, ``inputs``; default: every visible device) spreads it, with
    identical results on any number of devices. ``subset`` (edge or node indices; ``exact`` only)
    computes just those, leaving the others NaN. ``pooling`` (``eap-ig-activations``):
    ``reference`` (default: the reference EAP-IG library's), ``reference-tl`` (its numbers through
    TransformerLens, artefact included) or ``source`` (see ``estimators.gradient``).
    ``progress`` shows a bar for long runs.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {list(LEVELS)}")
    check_ablation(ablation)
    check_steps(method, steps)
    if ig_convention not in IG_CONVENTIONS:
        raise ValueError(f"unknown ig_convention {ig_convention!r}; choose from {list(IG_CONVENTIONS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
    if subset is not None:
        if method != "exact":
            raise ValueError("subset applies to method='exact' (the gradient methods score every edge at once)")
        subset = np.unique(np.asarray(subset, np.int64))
        limit = model.graph.n_edges if level == "edge" else model.graph.n_src
        if subset.size == 0 or subset.min() < 0 or subset.max() >= limit:
            raise ValueError(f"subset must be non-empty indices in [0, {limit})")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    if memory_budget is not None:
        memory_budget = check_int(memory_budget, "memory_budget (bytes per device)")
    check_for_model(data, model)
    if mesh is None and jax.device_count() > 1:
        mesh = make_mesh()

    graph = model.graph
    n_items = graph.n_edges if level == "edge" else graph.n_src
    names = graph.edge_names if level == "edge" else graph.src_names
    params = {
        "steps": steps if method != "exact" else None,
        "ablation": ablation,
        "task": data.task,
        "metric": data.metric,
    }
    params.update(counterfactual=data.counterfactual, noise=data.noise, model=model.config.name, n_inputs=len(data))
    if method == "eap-ig-inputs":
        params["ig_convention"] = ig_convention
    if method == "eap-ig-activations":
        params["pooling"] = pooling

    t0 = time.perf_counter()
    if subset is not None:
        params["subset"] = int(subset.size)
    n_work = (n_items if subset is None else subset.size) if method == "exact" else 1
    with progress_bar(progress, len(data) * n_work, method) as bar:
        if method == "exact":
            per_input, clean_metric = exact_scores(
                model, data, level=level, ablation=ablation, batch_size=batch_size,
                memory_budget=memory_budget, mesh=mesh, subset=subset, progress=bar,
            )  # fmt: skip
        else:
            per_input, clean_metric = _gradient(
                model,
                data,
                method,
                level,
                steps,
                ablation,
                ig_convention,
                pooling,
                batch_size,
                memory_budget,
                mesh,
                bar,
            )
    params["seconds"] = round(time.perf_counter() - t0, 3)
    finite_or_raise(
        per_input if subset is None else per_input[:, subset],
        names if subset is None else tuple(names[i] for i in subset),
    )
    return Scores(per_input, graph, level, method, params, clean_metric, np.asarray(data.uid))


def gradient_batch_size(cfg: ModelConfig, n_positions: int, method: str, memory_budget: int) -> int:
    """Inputs per gradient call that fit ``memory_budget`` (forward + backward, every slot's gradient
    [T, N, P, D]; a conservative count that still assumes per-slot attention inputs)."""
    g = cfg.graph
    D, H, F, L = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.n_layers
    per_layer = 3 * H * D * 4 + 3 * H * n_positions * 2 + F * 4 + D * 12
    per_input = 4 * n_positions * (g.n_dst * D * 3 + g.n_src * D * 4 + L * per_layer)
    if method == "eap-ig-activations":
        per_input += 4 * n_positions * g.n_dst * D
    fit = memory_budget // per_input
    if fit < 1:
        raise MemoryError(
            f"a memory budget of {mib(memory_budget)} is too small for one input "
            f"(about {mib(per_input)} for {n_positions} positions)"
        )
    return int(min(fit, 32))


@functools.lru_cache(maxsize=32)
def _gradient_kernel(cfg, method, metric, steps, convention, pooling, ablation, level, mesh):
    g = cfg.graph
    edge_src, edge_dst = jnp.asarray(g.edge_src), jnp.asarray(g.edge_dst)
    valid = jnp.asarray(g.valid)

    def kernel(params, b: TaskBatch, noise, noise_seed, means):
        ref_nodes, ref_input = reference_values(cfg, params, b, ablation, noise, noise_seed, means)
        clean_nodes, clean_metric = run_nodes(cfg, params, b, metric)
        dense = gradient_scores(
            cfg, method, metric, steps, convention, pooling, params, b, clean_nodes, ref_nodes, ref_input,
            ref_is_run=ablation == "patch",
        )  # fmt: skip
        items = dense[:, edge_src, edge_dst] if level == "edge" else jnp.where(valid, dense, 0).sum(-1)
        return items, clean_metric

    rows = P((EDGES, INPUTS))
    batch = TaskBatch(*(rows for _ in TaskBatch._fields))
    return jax.jit(spmd(kernel, mesh, (P(), batch, P(), P(), P()), (rows, rows)))


def _gradient(model, data, method, level, steps, ablation, convention, pooling, batch_size, memory_budget, mesh, bar):
    cfg = model.config
    n_dev = 1 if mesh is None else mesh.size
    local = batch_size or gradient_batch_size(cfg, data.n_positions, method, memory_budget or DEFAULT_MEMORY_BUDGET)
    local = min(local, len(data))
    means = dataset_means(model, data, local) if ablation == "mean" else jnp.zeros(())
    kernel = _gradient_kernel(
        cfg,
        method,
        data.metric,
        steps,
        convention,
        pooling,
        ablation,
        level,
        mesh if mesh is not None and mesh.size > 1 else None,
    )
    outs, metrics = [], []
    for b, rows in data.batches(local, devices=n_dev):
        items, clean_metric = kernel(model.params, b, data.noise, data.noise_seed, means)
        outs.append(np.asarray(items)[: len(rows)])
        metrics.append(np.asarray(clean_metric)[: len(rows)])
        if bar is not None:
            bar(len(rows))
    return np.concatenate(outs), np.concatenate(metrics)
