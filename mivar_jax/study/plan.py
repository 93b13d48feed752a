"""``plan``: a study's expected time, peak memory and disk, before running it.

Memory and disk come from the engine's memory model: per cell, the weights plus the largest
per-call working memory (the estimator's ``bytes_per_input`` × inputs per call, sized as the driver
sizes them), and the per-input scores (float32, inputs × edges) the cell writes. A plan whose peak
exceeds the device's memory is refused with the fix.

Time comes from a calibration run on the current device (``calibrate=True``): the study's first cell
is computed in full in a temporary directory (its seconds, compilation apart), and every estimator
of the grid is timed on one call of the cells' shape (first call: compilation; second: steady). A
cell's prediction is the first cell's non-scoring seconds without their compilation, plus its
estimator's calls × the steady time of one call, plus that estimator's compilation the first time
the study meets it; the first cell's is measured. The reference (exact patching) is timed on one
input (nodes) and on 8 edges of one input, and scaled by its inputs and edges. A learned-mask cell
(``mivar_jax.masks``) is its calls (``STEPS_PER_CALL`` steps of one seed each) × one timed call,
plus the first scored cell's seconds for its EAP-IG comparison and evaluation; its memory is one
seed's forward, saved activations and backward. The study-level analysis and report after the
cells (seconds) are not counted.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time

import jax
import numpy as np

from mivar_jax import engine
from mivar_jax._checks import mib
from mivar_jax._shards import host_memory
from mivar_jax._timing import Stopwatch
from mivar_jax.estimators.attribute import scores_limit
from mivar_jax.estimators.exact import bytes_per_input_state, bytes_per_patch
from mivar_jax.estimators.gradient import batching
from mivar_jax.estimators.registry import get
from mivar_jax.evaluation import bytes_per_circuit
from mivar_jax.masks import MASK_METHODS, STEPS_PER_CALL, learn_mask
from mivar_jax.study.config import ConfigError, StudyConfig, estimator_label
from mivar_jax.study.runner import REFERENCE, Study, _rows, at_one_width


@dataclasses.dataclass(frozen=True)
class Plan:
    """Rows per cell: ``cell``, ``method``, ``inputs``, ``batch`` (inputs per call), ``calls``,
    ``seconds`` (predicted; None without calibration), ``peak_bytes``, ``scores_bytes`` and
    ``scores_sharded`` (larger than ``estimator.scores_memory_kib``: written to disk in shards as
    they are computed, read back in blocks)."""

    study: str
    model: str
    device: str
    edges: int
    weights_bytes: int
    device_bytes: int | None
    rows: list[dict]
    calibration_seconds: float | None

    @property
    def total_seconds(self) -> float | None:
        times = [r["seconds"] for r in self.rows]
        return None if any(t is None for t in times) else float(sum(times))

    @property
    def peak_bytes(self) -> int:
        return max(r["peak_bytes"] for r in self.rows)

    @property
    def scores_bytes(self) -> int:
        return sum(r["scores_bytes"] for r in self.rows)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "total_seconds": self.total_seconds, "peak_bytes": self.peak_bytes,
                "scores_bytes": self.scores_bytes}  # fmt: skip


def plan(study, *, model=None, calibrate: bool = True, device_bytes: int | None = None) -> Plan:
    """The plan of ``study`` (a ``Study``, a ``StudyConfig`` or a study file) on the current device.
    ``model``: the config's model already loaded; ``device_bytes``: the memory to plan against
    (default: the device's, or the machine's RAM on CPU). Raises ``ConfigError`` when the peak does
    not fit, naming the fix."""
    s = (
        study
        if isinstance(study, Study)
        else Study(study)
        if isinstance(study, StudyConfig)
        else Study.from_file(study)
    )
    cfg = s.config
    model = model if model is not None else s.load()
    s.check(model)
    mc, g = model.config, model.graph
    _, built, _ = s._prepare(model)
    datasets = at_one_width(built)
    P = next(iter(datasets.values())).n_positions
    weights = int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params)))
    res = engine.Resources(None, cfg.estimator.batch_size or None, cfg.estimator.memory_budget_mib * 2**20)
    capacity = device_bytes if device_bytes is not None else _device_bytes()
    held = scores_limit(cfg.estimator.scores_memory_kib * 2**10 or None)  # larger scores: shards on disk

    rows = []
    for cell in cfg.cells():
        data = datasets[cell.dataset]
        discovery, _ = s.split(cell, len(data))
        if cell.method in MASK_METHODS:  # one seed per call at the least: forward, saved activations, backward
            mk = cfg.masks
            n_seeds = mk.seeds + (mk.replicates if mk.replicates >= 2 else 0)
            rows.append({"cell": cell.id, "method": cell.method, "inputs": len(discovery), "batch": len(discovery),
                         "calls": n_seeds * -(-mk.steps // STEPS_PER_CALL), "seconds": None,
                         "peak_bytes": weights + 3 * bytes_per_circuit(mc, len(discovery), P),
                         "scores_bytes": 4 * n_seeds * g.n_edges, "scores_sharded": False})  # fmt: skip
            continue
        estimator = get(cell.method)
        per_input = estimator.bytes_per_input(mc, P)
        batch, calls = batching(mc, estimator, len(discovery), P, res)  # as the driver sizes the job
        rows.append({"cell": cell.id, "method": estimator_label(cell.method, cell.steps), "inputs": len(discovery),
                     "batch": batch, "calls": calls, "seconds": None, "peak_bytes": weights + batch * per_input,
                     "scores_bytes": 4 * len(discovery) * g.n_edges,
                     "scores_sharded": 4 * len(discovery) * g.n_edges > held})  # fmt: skip
    if cfg.reference.level != "none":
        r = cfg.reference
        n_ref = cfg.data.n if r.inputs == 0 else min(r.inputs, cfg.data.n)  # runner.input_rows: 0 = all
        n_top = r.top_k * sum(c.dataset == cfg.cells()[0].dataset for c in cfg.cells())
        ref_edges = g.n_edges if r.edges == -1 else min(g.n_edges, r.edges + n_top)  # at most
        state = bytes_per_input_state(mc, P) + bytes_per_patch(mc, P, P)
        rows.append({"cell": REFERENCE, "method": "exact", "inputs": n_ref, "batch": 1, "calls": n_ref,
                     "edges": ref_edges, "seconds": None, "peak_bytes": weights + state,
                     "scores_bytes": 4 * n_ref * ((1 + len(cfg.scored_estimators)) * g.n_src + g.n_edges),
                     "scores_sharded": ref_edges > 0 and 4 * n_ref * g.n_edges > held})  # fmt: skip
    peak = max(r["peak_bytes"] for r in rows)
    if capacity is not None and peak > capacity:
        raise ConfigError(
            f"the study needs about {mib(peak)} on this device (weights {mib(weights)} plus the "
            f"largest call's working memory) but it has {mib(capacity)}: lower estimator.memory_budget_mib or "
            "estimator.batch_size, use model.dtype = 'bfloat16', or run fewer inputs (data.n)"
        )
    seconds = _calibrate(s, model, datasets, rows) if calibrate else None
    return Plan(cfg.name, mc.name, f"{jax.devices()[0].device_kind} × {jax.device_count()}", g.n_edges, weights,
                capacity, rows, seconds)  # fmt: skip


def _calibrate(s: Study, model, datasets, rows) -> float:
    """Fill each row's ``seconds`` from a calibration run (module docstring); its own seconds."""
    cfg = s.config
    t_start = time.perf_counter()
    cells = cfg.cells()
    first_call, steady = {}, {}
    for cell, row in zip(cells, rows, strict=False):
        key = (cell.method, cell.steps)
        if key in steady:
            continue
        data = datasets[cell.dataset]
        discovery, _ = s.split(cell, len(data))
        some = _rows(data, discovery[: row["batch"]])
        if cell.method in MASK_METHODS:  # one call: STEPS_PER_CALL steps of one seed
            job = functools.partial(learn_mask, model, some, method=cell.method, target_edges=cfg.bootstrap.size,
                                    steps=STEPS_PER_CALL, seeds=1, key=jax.random.key(0), progress=False)  # fmt: skip
        else:
            job = functools.partial(s._attribute, model, some, *key, "edge", False)
        first_call[key], steady[key] = _timed_twice(job)
    c0 = next((c for c in cells if c.method not in MASK_METHODS), None)
    if c0 is None:  # only mask cells: their calls are all that is timed
        for cell, row in zip(cells, rows, strict=False):
            row["seconds"] = round(row["calls"] * steady[(cell.method, None)], 1)
        return round(time.perf_counter() - t_start, 1)
    with tempfile.TemporaryDirectory(prefix="mivar-plan-") as work, Stopwatch() as t:
        info = s._cell(model, datasets[c0.dataset], c0, work, False)
    rest = t.seconds - info["phase_seconds"].get("scores", 0.0) - t.compile_seconds
    seen = set()
    for cell, row in zip(cells, rows, strict=False):
        key = (cell.method, cell.steps)
        compile_s = max(first_call[key] - steady[key], 0.0) if key not in seen else 0.0
        seen.add(key)
        if cell is c0:
            row["seconds"] = round(t.seconds + compile_s, 1)
        elif cell.method in MASK_METHODS:  # + the cell's EAP-IG comparison, timed like the rest of c0
            row["seconds"] = round(row["calls"] * steady[key] + compile_s + t.seconds, 1)
        else:
            row["seconds"] = round(rest + row["calls"] * steady[key] + compile_s, 1)
    if cfg.reference.level != "none":
        row = rows[-1]
        data = datasets[c0.dataset]
        one = _rows(data, s.split(c0, len(data))[0][:1])
        node = _timed_twice(lambda: s._attribute(model, one, "exact", None, "node", False))
        edges = np.arange(min(8, model.graph.n_edges))
        edge = _timed_twice(lambda: s._attribute(model, one, "exact", None, "edge", False, edges))
        per_edge = edge[1] / len(edges)
        ref = row["inputs"] * (node[1] + per_edge * row["edges"]) + (node[0] - node[1]) + (edge[0] - edge[1])
        ref += sum(steady[(m, st)] for m, st in cfg.scored_estimators if (m, st) in steady)  # their node scores
        row["seconds"] = round(ref, 1)
    return round(time.perf_counter() - t_start, 1)


def _timed_twice(fn) -> tuple[float, float]:
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def _device_bytes() -> int | None:
    """The first device's memory (accelerators), or the machine's RAM (CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return host_memory()
    except (ValueError, OSError):
        return None
