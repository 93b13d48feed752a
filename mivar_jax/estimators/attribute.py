"""``attribute``: per-input scores of every edge or node, by any registered estimator."""

from __future__ import annotations

import hashlib
import time
import warnings

import jax
import numpy as np
from jax.sharding import Mesh

from mivar_jax import engine
from mivar_jax._checks import mib
from mivar_jax._progress import progress_bar
from mivar_jax._shards import MAX_SHARD_BYTES, ArraySink, Checkpoint, RowSink, ShardWriter, host_memory
from mivar_jax.estimators.gradient import IG_CONVENTIONS, POOLINGS
from mivar_jax.estimators.registry import ESTIMATORS, Options, get, load
from mivar_jax.patching import check_ablation
from mivar_jax.scores import Scores

METHODS = tuple(sorted(load(), key=lambda name: ESTIMATORS[name].kernel is not None))  # exact, then dense
LEVELS = ("edge", "node")


def attribute(
    model,
    data,
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
    scores_dir=None,
    scores_memory: int | None = None,
    checkpoint=None,
    progress: bool = True,
) -> Scores:
    """Per-input scores [N, E] (edges) or [N, S] (nodes) of ``data``'s metric on ``model``.

    ``method``: ``exact`` | ``eap`` | ``eap-ig-inputs`` | ``eap-ig-activations`` |
    ``clean-corrupted`` | ``ceap`` (the registry, ``estimators.registry``; definitions:
    ``estimators.exact``, ``estimators.gradient``).
    ``steps``: integration steps m of the IG-type methods (default 5; the reference library uses 30).
    ``ablation``: ``patch`` (the corrupted prompts, with the dataset's counterfactual noise),
    ``zero``, or ``mean`` (each node's clean output averaged over the dataset's real positions).
    ``batch_size`` (at most that many inputs per device and call; gradient estimators split the
    inputs into the fewest calls of equal size) and ``memory_budget`` (bytes per device for the
    per-input work, default 2 GiB) size the work; ``mesh`` (axes ``edges``, ``inputs``; default:
    every visible device) spreads it, with identical results on any number of devices. ``subset``
    (edge or node indices; ``exact`` only) computes just those, leaving the others NaN. ``pooling`` (``eap-ig-activations``):
    ``reference`` (default: the reference EAP-IG library's), ``reference-tl`` (its numbers through
    TransformerLens, artefact included) or ``source`` (see ``estimators.gradient``).
    ``scores_memory``: bytes the per-input scores may take in host memory (default: a quarter of
    this machine's). Larger scores are written to ``scores_dir`` in shards as they are computed and
    come back as lazy ``ScoreShards``, which aggregation, selection, the bootstrap and the per-edge
    statistics read in column blocks of ``scores_memory / 8`` bytes (``mivar_jax._shards``); without
    ``scores_dir`` they are refused. ``checkpoint``: a folder where each finished batch of inputs is
    saved as it comes; the same call after an interruption (same model, data, method and options,
    ``batch_size`` and ``memory_budget``; any number of devices) computes only the batches it lacks
    and gives what an uninterrupted call gives. The folder is removed once the scores are whole; one
    of another job is cleared. ``progress`` shows a bar for long runs.
    """
    estimator = get(method)
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; choose from {list(LEVELS)}")
    check_ablation(ablation)
    if estimator.takes_steps and (not isinstance(steps, int | np.integer) or steps < 1):
        raise ValueError(f"{method} needs steps ≥ 1 (an integer), got {steps!r}")
    if ig_convention not in IG_CONVENTIONS:
        raise ValueError(f"unknown ig_convention {ig_convention!r}; choose from {list(IG_CONVENTIONS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
    graph = model.graph
    n_items = graph.n_edges if level == "edge" else graph.n_src
    if subset is not None:
        if not estimator.subset:
            partial = " or ".join(f"method={e.name!r}" for e in ESTIMATORS.values() if e.subset)
            raise ValueError(f"subset applies to {partial} (the others score every edge at once)")
        subset = np.unique(np.asarray(subset, np.int64))
        if subset.size == 0 or subset.min() < 0 or subset.max() >= n_items:
            raise ValueError(f"subset must be non-empty indices in [0, {n_items})")
    if method == "exact" and np.dtype(model.dtype) != np.float32:
        warnings.warn(
            f"exact scores are differences of two metrics, and in {np.dtype(model.dtype)} their rounding noise "
            "(about 1e-2 of the metric) exceeds most edges' effects (on smollm2-135m: median rank correlation "
            "0.07 with float32, README 'Reduced precision'); load the model in float32 for exact patching",
            stacklevel=2,
        )
    res = engine.resources(model, data, batch_size=batch_size, memory_budget=memory_budget, mesh=mesh)
    options = Options(
        data.metric, level, ablation, int(steps) if estimator.takes_steps else None, ig_convention, pooling
    )

    names = graph.edge_names if level == "edge" else graph.src_names
    params = {
        "steps": steps if method != "exact" else None,
        "ablation": ablation,
        "task": data.task,
        "metric": data.metric,
    }
    params.update(counterfactual=data.counterfactual, noise=data.noise, model=model.config.name, n_inputs=len(data))
    for option in ("ig_convention", "pooling"):
        if option in estimator.options:
            params[option] = {"ig_convention": ig_convention, "pooling": pooling}[option]
    if subset is not None:
        params["subset"] = int(subset.size)

    sink = _sink(len(data), n_items, subset, names, scores_dir, scores_memory)
    saved = None
    if checkpoint is not None:  # what the saved batches were computed from
        arrays = ("clean", "corrupted", "attention_mask", "answer_pos", "correct", "incorrect", "uid")
        job = {
            "params": params, "level": level, "subset": None if subset is None else subset.tolist(),
            "inputs": _digest(getattr(data, a) for a in arrays), "noise_seed": int(data.noise_seed),
            "weights": _digest(jax.tree.leaves(model.params)), "graph": graph.config_dict(),
            "batch_size": res.batch_size, "memory_budget": res.memory_budget,
        }  # fmt: skip
        saved = Checkpoint(checkpoint, job)
    t0 = time.perf_counter()
    n_work = (n_items if subset is None else subset.size) if estimator.kernel is None else 1
    with progress_bar(progress, len(data) * n_work, method) as bar:
        restored = sink.resume(saved) if saved is not None else 0
        if restored and bar is not None:
            bar(restored * n_work)
        estimator.run(model, data, options, res, estimator, subset, bar, sink)
    params["seconds"] = round(time.perf_counter() - t0, 3)
    if restored:
        params["resumed_inputs"] = restored
    scores = Scores(sink.finish(), graph, level, method, params, sink.clean, np.asarray(data.uid))
    if saved is not None:
        saved.remove()
    return scores


def _digest(arrays) -> str:
    """sha256 of arrays' dtypes, shapes and bytes (a device array: its first local copy or shard)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.addressable_data(0) if isinstance(a, jax.Array) else a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def scores_limit(scores_memory: int | None) -> int:
    """The host memory per-input scores may take (bytes): ``scores_memory``, by default a quarter of
    the machine's RAM; scores larger than it go to disk as shards."""
    limit = host_memory() // 4 if scores_memory is None else int(scores_memory)
    if limit < 1:
        raise ValueError(f"scores_memory must be a positive number of bytes, got {scores_memory!r}")
    return limit


def _sink(n_rows: int, n_items: int, subset, names, scores_dir, scores_memory) -> RowSink:
    """Where the scores go: memory if [n_rows, n_items] float32 fits ``scores_limit``, else shards
    in ``scores_dir``. Every batch is checked for NaN/inf (the scored items) as it arrives."""
    limit = scores_limit(scores_memory)
    cols = slice(None) if subset is None else subset
    item_names = names if subset is None else tuple(names[i] for i in subset)
    check = lambda rows, values: finite_or_raise(values[:, cols], item_names, rows)  # noqa: E731
    fill = np.nan if subset is not None else 0.0
    size = 4 * n_rows * n_items
    if size <= limit:
        return ArraySink(n_rows, n_items, fill, check)
    if scores_dir is None:
        raise ValueError(
            f"the scores of {n_rows} inputs × {n_items} items take {mib(size)}, over scores_memory = {mib(limit)}: "
            "pass scores_dir= to write them to disk as they are computed, raise scores_memory, or score fewer inputs"
        )
    shard_bytes = min(max(limit // 4, 1), MAX_SHARD_BYTES)
    return ShardWriter(
        scores_dir, n_rows, n_items, fill, shard_bytes=shard_bytes, budget=max(limit // 8, 1), check=check
    )


def finite_or_raise(per_input: np.ndarray, names: tuple[str, ...], rows: np.ndarray | None = None) -> None:
    """Refuse non-finite scores, naming the first inputs and edges (or nodes) affected."""
    bad = ~np.isfinite(per_input)
    if not bad.any():
        return
    inputs, items = np.nonzero(bad)
    examples = ", ".join(
        f"input {int(rows[i]) if rows is not None else int(i)} × {names[j]}"
        for i, j in list(zip(inputs, items, strict=True))[:5]
    )
    raise FloatingPointError(
        f"{int(bad.sum())} non-finite scores in {len(np.unique(inputs))} inputs and {len(np.unique(items))} "
        f"edges/nodes, e.g. {examples}"
    )
