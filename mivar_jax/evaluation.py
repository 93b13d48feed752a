"""Circuit evaluation: the model with every non-circuit edge ablated, for many circuits at once.

For a circuit C (edge mask M), each destination reads Σ_u M·z_u + (1 − M)·z̃_u (the graph-form
forward), with z̃ the corrupted run's node outputs (``ablation="patch"``), zeros or dataset
means. Per input n:

- ``metric`` m_n(C) (the task's metric at the answer position); m(full) is the clean model,
  m(∅) the empty circuit (every edge ablated: the corrupted run for ``patch``).
- faithfulness f(C) = (m̄(C) − m̄(∅)) / (m̄(full) − m̄(∅)) with m̄ the mean over inputs (MIB's
  definition); ``faithfulness_per_input`` applies the same ratio per input (noisy where the
  full and empty metrics are close).
- circuit error: the share of inputs whose top-1 answer under C differs from the full model's,
  either among the task's answer tokens (``answers="task"``, default: correct ∪ incorrect ids)
  or over the whole vocabulary (``answers="vocab"``).
- KL(full ‖ C) of the next-token distributions at the answer position, in nats.
- standard errors over inputs (ddof 1): ``circuit_error_se`` = std(disagree)/√N;
  ``faithfulness_se`` by the delta method for a ratio of means, std(a − f·b) / (√N |b̄|) with
  a = m(C) − m(∅) and b = m(full) − m(∅) per input (NaN for N < 2).

With counterfactual patching a circuit changes nothing before the first position where the
clean and corrupted prompts differ (the corrupted run equals the clean run there), and nothing
after the answer position reaches the metrics: each input runs on its window of positions only
(``patching.windows``), earlier keys and values read from the clean run's caches. Zero and
mean ablation change every position and run on the whole prompt.

``evaluate_curve`` evaluates the pruned top-n circuits at MIB's edge fractions (n = ⌊f·E⌋) and
integrates with the trapezoidal rule over the fraction axis: CPR = ∫ f, CMD = ∫ |1 − f|.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mivar_jax import engine
from mivar_jax._progress import progress_bar
from mivar_jax.circuits.circuit import Circuit
from mivar_jax.circuits.pruning import prune
from mivar_jax.circuits.selection import aggregated, edge_order
from mivar_jax.engine import EDGES, INPUTS
from mivar_jax.models.interventions import EdgeMix, Window
from mivar_jax.models.layers import position_ids, take_window
from mivar_jax.models.transformer import forward
from mivar_jax.patching import (
    check_ablation,
    corrupted_run,
    dataset_means,
    kv_caches,
    reference_values,
    residual_states,
    window_start,
    windows,
)
from mivar_jax.scores import Scores
from mivar_jax.sharding import Spec
from mivar_jax.tasks.data import TaskBatch, TaskData
from mivar_jax.tasks.metrics import get_metric, kl_divergence

ANSWER_SETS = ("task", "vocab")
# A circuit kernel's compilation costs about as much as running 400 input·positions through one
# circuit (smollm2-135m, 2-core CPU: ≈ 3 s against ≈ 8 ms; an accelerator runs faster, so the
# trade favours fewer widths there too): with few circuits, one window width per evaluation.
COMPILE_POSITIONS = 400.0
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class CircuitEvaluation:
    """Per-circuit, per-input results ([C, N]; [N] when one Circuit was evaluated)."""

    metric: np.ndarray
    full_metric: np.ndarray
    empty_metric: np.ndarray
    agree_task: np.ndarray  # top-1 among the task's answers equals the full model's
    agree_vocab: np.ndarray  # top-1 over the vocabulary equals the full model's
    kl: np.ndarray
    n_edges: np.ndarray | np.integer
    ablation: str = "patch"

    def on_inputs(self, index) -> CircuitEvaluation:
        """The results on the evaluated inputs ``index`` only (an index array, mask or slice over
        the last axis): one evaluation of several input sets, split into one per set."""
        take = lambda a: a[..., index]
        return dataclasses.replace(
            self, metric=take(self.metric), full_metric=take(self.full_metric), empty_metric=take(self.empty_metric),
            agree_task=take(self.agree_task), agree_vocab=take(self.agree_vocab), kl=take(self.kl),
        )  # fmt: skip

    @property
    def faithfulness(self) -> np.ndarray | float:
        full, empty = self.full_metric.mean(), self.empty_metric.mean()
        return _scalar((self.metric.mean(-1) - empty) / (full - empty))

    @property
    def faithfulness_per_input(self) -> np.ndarray:
        return (self.metric - self.empty_metric) / (self.full_metric - self.empty_metric)

    def circuit_error(self, answers: str = "task") -> np.ndarray | float:
        if answers not in ANSWER_SETS:
            raise ValueError(f"unknown answer set {answers!r}; choose from {list(ANSWER_SETS)}")
        agree = self.agree_task if answers == "task" else self.agree_vocab
        return _scalar(1.0 - agree.mean(-1))

    @property
    def faithfulness_se(self) -> np.ndarray | float:
        """Standard error over inputs of ``faithfulness`` (delta method; module docstring)."""
        a, b = self.metric - self.empty_metric, self.full_metric - self.empty_metric
        f = np.asarray(self.faithfulness)[..., None]
        return _scalar(_standard_error(a - f * b) / abs(b.mean()))

    def circuit_error_se(self, answers: str = "task") -> np.ndarray | float:
        """Standard error over inputs of ``circuit_error(answers)``: std(disagree) / √N."""
        self.circuit_error(answers)  # checks ``answers``
        agree = self.agree_task if answers == "task" else self.agree_vocab
        return _scalar(_standard_error(1.0 - agree))

    @property
    def kl_mean(self) -> np.ndarray | float:
        return _scalar(self.kl.mean(-1))

    @property
    def metric_mean(self) -> np.ndarray | float:
        return _scalar(self.metric.mean(-1))

    def summary(self) -> dict | list[dict]:
        """Means per circuit as plain floats (a dict for one circuit, a list for a stack)."""
        columns = {
            "n_edges": self.n_edges, "metric": self.metric_mean, "faithfulness": self.faithfulness,
            "faithfulness_se": self.faithfulness_se, "circuit_error_task": self.circuit_error("task"),
            "circuit_error_task_se": self.circuit_error_se("task"), "circuit_error_vocab": self.circuit_error("vocab"),
            "circuit_error_vocab_se": self.circuit_error_se("vocab"), "kl": self.kl_mean,
        }  # fmt: skip
        columns = {k: np.atleast_1d(v) for k, v in columns.items()}
        common = {"full_metric": float(self.full_metric.mean()), "empty_metric": float(self.empty_metric.mean())}
        rows = [
            {k: int(v[c]) if k == "n_edges" else float(v[c]) for k, v in columns.items()} | common
            for c in range(len(columns["metric"]))
        ]
        return rows[0] if self.metric.ndim == 1 else rows


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def _standard_error(x_CxN: np.ndarray) -> np.ndarray | float:
    """std (ddof 1) / √N over the last axis; NaN with fewer than two inputs."""
    n = x_CxN.shape[-1]
    if n < 2:
        return np.full(x_CxN.shape[:-1], np.nan)
    return np.asarray(x_CxN, np.float64).std(-1, ddof=1) / np.sqrt(n)


def _masks(circuits, graph) -> tuple[np.ndarray, bool]:
    """Circuits as a [C, E] bool stack, and whether a single circuit was given."""
    if isinstance(circuits, Circuit):
        circuits, single = [circuits], True
    elif isinstance(circuits, (list, tuple)):
        single = False
    else:
        arr = np.asarray(circuits)
        if arr.dtype != bool:
            raise ValueError(f"circuit masks must be boolean, got {arr.dtype}")
        single = arr.ndim == 1
        arr = arr[None] if single else arr
        if arr.ndim != 2 or arr.shape[1] != graph.n_edges:
            raise ValueError(f"circuit masks must have shape [C, {graph.n_edges}], got {np.shape(circuits)}")
        return arr, single
    if not circuits:
        raise ValueError("no circuits to evaluate")
    for c in circuits:
        if not isinstance(c, Circuit):
            raise TypeError(f"expected Circuit objects, got {type(c).__name__}")
        if c.graph != graph:
            raise ValueError(f"a circuit of {c.graph} does not fit the model's {graph}")
    return np.stack([c.edges for c in circuits]), single


def _top_answer(logits_NxV, b: TaskBatch):
    ids = jnp.concatenate([b.correct, b.incorrect], -1)
    vals = jnp.where(ids >= 0, jnp.take_along_axis(logits_NxV, jnp.maximum(ids, 0), -1), -jnp.inf)
    return jnp.take_along_axis(ids, jnp.argmax(vals, -1)[:, None], -1)[:, 0]


@functools.lru_cache(maxsize=16)
def _baseline_kernel(cfg, metric_name, ablation, mesh):
    """The jitted per-batch baseline: the clean logits and metric, what patched edges read (z̃, the
    whole prompt), the clean run's key/value caches (counterfactual patching: what circuit windows
    read) and the empty circuit's metric (for ``patch`` the corrupted run itself). One compilation
    per batch shape, whatever the windows."""
    metric = get_metric(metric_name)
    rows = Spec((EDGES, INPUTS))
    batch = TaskBatch(*(rows for _ in TaskBatch._fields))

    def baseline(params, b, noise, noise_seed, means):
        full, nodes = forward(cfg, params, b.clean, b.attention_mask, logit_positions=b.answer_pos, nodes=True)
        caches = ()
        if ablation == "patch":
            pre, _, _ = residual_states(cfg, params, nodes)
            caches = kv_caches(cfg, params, pre, position_ids(b.attention_mask))
            # every edge patched reads the corrupted run: the empty circuit is that run
            empty, z_ref, _ = corrupted_run(cfg, params, b, noise, noise_seed)
        else:
            z_ref, _ = reference_values(cfg, params, b, ablation, noise, noise_seed, means)
            zeros = jnp.zeros(cfg.graph.n_edges, full.dtype)
            empty = forward(
                cfg, params, b.clean, b.attention_mask, (EdgeMix(zeros, z_ref),), logit_positions=b.answer_pos
            )
        return full, z_ref, caches, metric(full, b.correct, b.incorrect), metric(empty, b.correct, b.incorrect)

    out = (rows, Spec(None, (EDGES, INPUTS)), _cache_specs(ablation), rows, rows)
    return engine.kernel(baseline, mesh, (Spec(), batch, Spec(), Spec(), Spec()), out)


def _cache_specs(ablation: str) -> tuple:
    return (Spec(None, None, (EDGES, INPUTS)),) * 2 if ablation == "patch" else ()


@functools.lru_cache(maxsize=16)
def _circuit_kernel(cfg, metric_name, ablation, mesh, width: int | None):
    """The jitted circuit kernel (a chunk of masks on a batch); with ``width`` (counterfactual
    patching) circuits run on each input's window of ``width`` positions only (``windows``),
    earlier positions being the clean run's."""
    metric = get_metric(metric_name)
    rows = Spec((EDGES, INPUTS))
    batch = TaskBatch(*(rows for _ in TaskBatch._fields))

    def circuits(params, b, z_ref, caches, full_NxV, masks_CxE):
        full_top_task, full_top_vocab = _top_answer(full_NxV, b), jnp.argmax(full_NxV, -1)
        window = ()
        if width is not None:
            start = window_start(b, width)
            z_ref = take_window(z_ref, start, width, axis=2)
            window = (Window(start, *caches, width),)

        def one(mask_E):
            logits = forward(
                cfg, params, b.clean, b.attention_mask, (EdgeMix(mask_E.astype(full_NxV.dtype), z_ref), *window),
                logit_positions=b.answer_pos,
            )  # fmt: skip
            return (
                metric(logits, b.correct, b.incorrect),
                _top_answer(logits, b) == full_top_task,
                jnp.argmax(logits, -1) == full_top_vocab,
                kl_divergence(logits, full_NxV),
            )

        return jax.vmap(one)(masks_CxE)

    z_spec, out_c = Spec(None, (EDGES, INPUTS)), Spec(None, (EDGES, INPUTS))
    return engine.kernel(circuits, mesh, (Spec(), batch, z_spec, _cache_specs(ablation), rows, Spec()), (out_c,) * 4)


def bytes_per_circuit(cfg, n_inputs: int, n_positions: int) -> int:
    """Working memory of one circuit evaluated on ``n_inputs`` inputs (one device)."""
    g = cfg.graph
    return (
        4 * n_inputs * n_positions * cfg.d_model * (2 * g.n_src + 3 * g.slots_per_layer) + 4 * n_inputs * cfg.vocab_size
    )


def circuit_chunk(cfg, n_inputs: int, n_positions: int, memory_budget: int) -> int:
    """Circuits per call that fit ``memory_budget`` with ``n_inputs`` inputs per device."""
    return engine.fit(
        memory_budget, bytes_per_circuit(cfg, n_inputs, n_positions), cap=64,
        what=f"circuit on {n_inputs} inputs", fix="lower batch_size",
    )  # fmt: skip


def evaluate(
    model,
    data: TaskData,
    circuits,
    *,
    ablation: str = "patch",
    batch_size: int | None = None,
    memory_budget: int | None = None,
    mesh=None,
    progress: bool = True,
) -> CircuitEvaluation:
    """Evaluate one Circuit, a list of Circuits, or a [C, E] bool stack of edge masks on ``data``
    (definitions in the module docstring). Inputs are batched (``batch_size`` per device) and
    spread over ``mesh`` (default: every visible device); circuits are vmapped in chunks that
    fit ``memory_budget`` bytes. Results are identical on any number of devices."""
    graph = model.graph
    masks, single = _masks(circuits, graph)
    check_ablation(ablation)
    res = engine.resources(model, data, batch_size=batch_size, memory_budget=memory_budget, mesh=mesh)
    cfg = model.config
    local = min(res.batch_size or 8, len(data))
    C = masks.shape[0]
    # the stack in the fewest calls the budget allows, of equal size
    chunk, n_chunks = engine.even_chunks(C, circuit_chunk(cfg, local, data.n_positions, res.memory_budget))
    means = dataset_means(model, data, local, ablation)
    params = engine.on_mesh(model.params, res.mesh)

    padded = np.zeros((n_chunks * chunk, graph.n_edges), bool)
    padded[:C] = masks
    full_m, empty_m = np.zeros(len(data), np.float32), np.zeros(len(data), np.float32)
    outs = [np.zeros((C, len(data)), dtype) for dtype in (np.float32, bool, bool, np.float32)]
    # Counterfactual patching changes nothing before the first position where the prompts
    # differ: inputs are grouped by the window of trailing positions a circuit can change.
    widths = windows(data, ablation, local, per_width=COMPILE_POSITIONS / C)
    with progress_bar(progress, len(data) * C, "evaluate") as bar:
        for width, b, rows in engine.batches(data, res, local, widths=widths):
            n_real = len(rows)
            baseline = _baseline_kernel(cfg, data.metric, ablation, res.mesh)
            run = _circuit_kernel(cfg, data.metric, ablation, res.mesh, width if width < data.n_positions else None)
            full, z_ref, caches, m_full, m_empty = baseline(params, b, data.noise, data.noise_seed, means)
            full_m[rows] = np.asarray(m_full)[:n_real]
            empty_m[rows] = np.asarray(m_empty)[:n_real]
            for k in range(n_chunks):
                res_k = run(params, b, z_ref, caches, full, jnp.asarray(padded[k * chunk : (k + 1) * chunk]))
                n_c = min(chunk, C - k * chunk)
                for out, r in zip(outs, res_k, strict=True):
                    out[k * chunk : k * chunk + n_c, rows] = np.asarray(r)[:n_c, :n_real]
                if bar is not None:
                    bar(n_real * n_c)
    metric, agree_task, agree_vocab, kl = outs
    squeeze = (lambda a: a[0]) if single else (lambda a: a)
    return CircuitEvaluation(
        metric=squeeze(metric),
        full_metric=full_m,
        empty_metric=empty_m,
        agree_task=squeeze(agree_task),
        agree_vocab=squeeze(agree_vocab),
        kl=squeeze(kl),
        n_edges=squeeze(masks.sum(-1)),
        ablation=ablation,
    )


@dataclasses.dataclass(frozen=True)
class CurveResult:
    """Faithfulness of the pruned top-n circuits at edge ``fractions`` (n = ⌊fraction·E⌋ requested,
    ``n_edges`` kept after pruning), and MIB's areas: CPR = ∫ f, CMD = ∫ |1 − f| (trapezoidal,
    over the fraction axis or its logarithm)."""

    fractions: np.ndarray
    n_requested: np.ndarray
    n_edges: np.ndarray
    faithfulness: np.ndarray
    cpr: float
    cmd: float
    evaluation: CircuitEvaluation

    def summary(self) -> dict:
        return {
            "cpr": self.cpr,
            "cmd": self.cmd,
            "points": [
                {"fraction": float(f), "n_requested": int(r), "n_edges": int(n), "faithfulness": float(v)}
                for f, r, n, v in zip(self.fractions, self.n_requested, self.n_edges, self.faithfulness, strict=True)
            ],
        }


def curve_areas(fractions, faithfulness, log_scale: bool = False) -> tuple[float, float]:
    """(CPR, CMD): trapezoidal areas under f and under |1 − f| over the fractions (MIB)."""
    x = np.log(np.asarray(fractions, np.float64)) if log_scale else np.asarray(fractions, np.float64)
    f = np.asarray(faithfulness, np.float64)
    if x.shape != f.shape or x.size < 2:
        raise ValueError("need at least two (fraction, faithfulness) points of matching shape")
    dx = np.diff(x)
    return float((dx * (f[:-1] + f[1:]) / 2).sum()), float((dx * (np.abs(1 - f[:-1]) + np.abs(1 - f[1:])) / 2).sum())


def evaluate_curve(
    model,
    data: TaskData,
    scores,
    fractions=MIB_FRACTIONS,
    *,
    aggregation: str = "mean",
    absolute: bool = True,
    log_scale: bool = False,
    **evaluate_kwargs,
) -> CurveResult:
    """MIB's faithfulness curve of ``scores`` (a Scores, or aggregated [E] scores of the model's
    graph) on ``data``, with CPR and CMD; one vmapped evaluation of all the circuits."""
    graph = model.graph
    if isinstance(scores, Scores) and scores.graph != graph:
        raise ValueError(f"scores are for {scores.graph}, the model's graph is {graph}")
    values, _ = aggregated(scores, aggregation, graph)
    fractions = np.asarray(fractions, np.float64)
    if (
        fractions.ndim != 1
        or fractions.size < 2
        or np.any(np.diff(fractions) <= 0)
        or not (fractions[0] > 0 and fractions[-1] <= 1)
    ):
        raise ValueError("fractions must be at least two increasing values in (0, 1]")
    n_scored = int(np.isfinite(values).sum())
    n_requested = np.floor(fractions * n_scored).astype(np.int64)
    order = np.asarray(edge_order(values, absolute))  # select(method='topn')'s order
    masks = np.zeros((fractions.size, graph.n_edges), bool)
    for i, n in enumerate(n_requested):
        masks[i, order[:n]] = True
    masks = np.asarray(prune(graph, masks)[0])
    ev = evaluate(model, data, masks, **evaluate_kwargs)
    faith = np.asarray(ev.faithfulness, np.float64)
    cpr, cmd = curve_areas(fractions, faith, log_scale)
    return CurveResult(fractions, n_requested, masks.sum(-1), faith, cpr, cmd, ev)
