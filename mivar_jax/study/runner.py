"""Study: run a config's grid of cells into a run directory, resumably, then analyse and report.

Per cell (a dataset × an estimator; ``StudyConfig.cells``), written to ``cells/<cell>/``:

- ``scores.safetensors``: per-input scores [N, E] (reused from a partial cell on resume);
- ``edges.csv``: every edge's intrinsic variability (mean, std, CV = std/|mean|, signal-to-noise
  ratio SNR = |mean|/std, sign agreement, inputs needed) and its aggregated score under each
  aggregation, with its bootstrap inclusion frequency at the headline size;
- ``bootstrap.json`` / ``bootstrap.npz``: the circuit bootstrap at every (aggregation, size):
  summaries, B × B Jaccard matrices, Jaccards to the full and majority circuits, sizes, inclusion
  frequencies, and the replicate circuits at the headline size (bit-packed);
- ``circuits.npz`` (full-data and majority circuits [A, S, E], aggregated scores [A, E]) and
  ``circuits/<aggregation>-n<size>.json``: the headline circuit in EAP-IG's graph JSON;
- ``evaluation.json``: faithfulness, circuit error and KL (with standard errors over the
  evaluation inputs) of every full-data circuit and of the majority circuit at the headline size;
- ``cell.json``: the cell's levels, estimator settings, evaluation inputs, timings, the median
  signal-to-noise ratio |mean|/std of each full-data circuit's edges and the headline numbers,
  written last (with the checksums of the other files, ``RunDir.cell``).

Evaluation and reference inputs are a random subset, the same for every run of a config: each
dataset's inputs are ordered by the permutation ``numpy.random.default_rng([config.seed,
crc32(dataset name)]).permutation(N)`` (``input_order``; the dataset name is ``Cell.dataset``,
e.g. ``s0-transfer-abc-n0``); circuits are evaluated on its first ``circuits.eval_inputs``, the
reference uses the first ``reference.inputs`` of the first cell's dataset (each in dataset order).

The ``reference`` cell holds exact scores (node level, and optionally edges: random ones and each
estimator's top-k of that dataset) on those inputs, with each estimator's node scores of the same
inputs: the estimator-noise and intrinsic-variance reference. Then
``results/`` (``analysis``) and the report (``mivar_jax.report``) are rebuilt from the cells.

Before the run directory is created (or a resumed run touched), the study is checked against the
model: it loads, circuit sizes and reference edges fit its graph, and every dataset of the grid
can be built (``data.n`` within ``tasks.capacity``); a failure is a ``ConfigError`` naming the key.

Same config ⇒ same results, on any number of devices: datasets come from their seeds, the
bootstrap from ``jax.random.key(config.seed)`` (the same resampling weights in every cell, so
cells are compared replicate by replicate), the estimators are deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import shutil
import sys
import tempfile
import time
import zlib

import jax
import numpy as np

from mivar_jax import engine, stats, tasks
from mivar_jax._io import atomic_write_bytes, atomic_write_text
from mivar_jax._shards import column_blocks
from mivar_jax._timing import Stopwatch
from mivar_jax.circuits import Circuit
from mivar_jax.circuits.pruning import prune
from mivar_jax.circuits.selection import select, topn
from mivar_jax.estimators import attribute
from mivar_jax.evaluation import evaluate, evaluate_curve
from mivar_jax.masks import MASK_METHODS, learn_mask
from mivar_jax.models import load_model
from mivar_jax.scores import Scores
from mivar_jax.study.analysis import analyse, plus_minus
from mivar_jax.study.config import ALL_EDGES, REFERENCE, Cell, ConfigError, StudyConfig, default_config, estimator_label
from mivar_jax.study.rundir import RunDir, RunDirError, write_json
from mivar_jax.tasks import TaskData


class Reporter:
    """What a running study tells its caller (the CLI draws it with rich; this one prints lines)."""

    def __init__(self, stream=None):
        self.stream = stream

    def say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def created(self, name: str, path: str) -> None:
        self.say(f"study {name} → {path}")

    def damaged(self, name: str, what: str) -> None:
        self.say(f"cell {name}: {what}: recomputing")

    def start(self, n_cells: int, n_done: int) -> None:
        self.say(f"{n_cells} cells, {n_done} already complete")

    def cell_start(self, index: int, n_cells: int, name: str) -> None:
        self.say(f"[{index + 1}/{n_cells}] {name} …")

    def cell_end(self, index: int, n_cells: int, name: str, info: dict) -> None:
        self.say(
            f"[{index + 1}/{n_cells}] {name}: {info['seconds']:.1f} s (compile {info['compile_seconds']:.1f} s) — "
            f"{info.get('headline', '')}"
        )

    def cell_cached(self, index: int, n_cells: int, name: str) -> None:
        self.say(f"[{index + 1}/{n_cells}] {name}: complete (from an earlier run)")


@dataclasses.dataclass
class Study:
    """A study config and what runs it: ``Study.from_file(path).run(out_dir)``."""

    config: StudyConfig = dataclasses.field(default_factory=default_config)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Study:
        return cls(StudyConfig.from_file(path))

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, **kwargs):
        """Finish an interrupted run (its finished cells are kept, the others computed)."""
        return cls(RunDir.open(run_dir).config).run(run_dir, resume=True, **kwargs)

    def run(
        self,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        reporter: Reporter | None = None,
        progress: bool = True,
        report: bool = True,
        model=None,
    ):
        """Run every cell not yet complete in ``out_dir``, then the study-level analysis and (with
        ``report``) the report. Returns the analysis (``mivar_jax.study.analysis.StudyResults``).
        With several processes (``jax.distributed``), each computes and process 0 writes.
        ``model``: the config's model already loaded (``Study.load``), to share it between studies."""
        if resume and jax.process_count() > 1:  # refused by every process, before any collective
            raise RunDirError(
                "resume a run in one process (without MIVAR_DISTRIBUTED or JAX_NUM_PROCESSES): only process 0 "
                "holds its finished cells and batches, so the other processes' work would not match its own"
            )
        reporter = reporter or Reporter(sys.stderr if progress else None)
        worker = jax.process_index() != 0
        if worker:  # identical SPMD work; only process 0 keeps files (a worker's are removed at the end)
            out_dir, resume = tempfile.mkdtemp(prefix="mivar-worker-"), False
        rd = None
        if resume:
            rd = RunDir.open(out_dir)
            rd.check_resumable()
            if rd.config != self.config:
                raise RunDirError(f"{rd.path} holds a run of another config; resume it without a study file")
            rd.lock()
        else:
            RunDir.check_new(out_dir)  # nothing is created before every check has passed
        try:
            if rd is not None:
                for name in self._names():
                    if rd.is_done(name) and (what := rd.damage(name)) is not None:
                        reporter.damaged(name, what)
                        rd.reopen(name)
            todo = [n for n in self._names() if rd is None or not rd.is_done(n)]
            model, datasets, seconds = self._prepare(model) if todo else (None, {}, 0.0)
            if rd is None:
                rd = RunDir.create(out_dir, self.config)
                reporter.created(self.config.name, rd.path)
            if model is not None:
                reporter.say(f"loaded {model} in {seconds:.1f} s")
            rd.set_status("running")
            self._run(rd, reporter, progress, model, datasets)
            results = analyse(rd)
            if report:
                from mivar_jax.report import write_report

                write_report(rd, results)
            rd.set_status("complete")
            rd.discard_partial()
            return results
        finally:
            if rd is not None:
                rd.unlock()
            if worker:
                shutil.rmtree(out_dir, ignore_errors=True)

    # ------------------------------------------------------------------ checks
    def _names(self) -> list[str]:
        """The cells to run, in order: the grid, then the reference (when there is one)."""
        return [c.id for c in self.config.cells()] + ([REFERENCE] if self.config.reference.level != "none" else [])

    def load(self):
        """The config's model, on the default mesh (a failure is a ``ConfigError``)."""
        cfg = self.config
        try:
            return load_model(cfg.model.source, dtype=cfg.model.dtype, mesh=engine.resources().mesh)
        except (ValueError, OSError) as err:  # CheckpointError is a ValueError
            raise ConfigError(f"model.source: {err}") from None

    def _prepare(self, model=None) -> tuple:
        """Load the model (unless given) and build every dataset of the grid, checking the study
        against them: (model, {dataset name: TaskData}, seconds to load); a failure is a
        ``ConfigError`` naming the key, and nothing is written."""
        cfg = self.config
        with Stopwatch() as t:
            model = model if model is not None else self.load()
        self.check(model)
        by_dataset = {c.dataset: c for c in cfg.cells()}  # one cell per dataset (they differ in the estimator only)
        return model, {name: self._make_dataset(model, c) for name, c in by_dataset.items()}, t.seconds

    def check(self, model) -> None:
        """The study against its loaded model: circuit sizes and reference edges fit its graph, it
        has a tokenizer, and every dataset of the grid can be drawn (else a ``ConfigError``)."""
        cfg = self.config
        E, name = model.graph.n_edges, model.config.name
        if too_big := [n for n in cfg.circuits.sizes if n > E]:
            raise ConfigError(f"circuits.sizes {too_big} exceed the {E} edges of {name}; choose sizes ≤ {E}")
        if too_big := [n for n in cfg.stability.faithfulness_sizes if n > E]:
            raise ConfigError(
                f"stability.faithfulness_sizes {too_big} exceed the {E} edges of {name}; choose sizes ≤ {E}"
            )
        if cfg.reference.level != "none" and cfg.reference.edges > E:
            raise ConfigError(f"reference.edges = {cfg.reference.edges} exceeds the {E} edges of {name}")
        if model.tokenizer is None:
            raise ConfigError(f"model.source: {name} was loaded without a tokenizer; studies build datasets from text")
        d = cfg.data
        for family, cf in sorted({(c.family, c.counterfactual) for c in cfg.cells()}):
            templates = None if family == "all" else family
            most = tasks.capacity(d.task, model.tokenizer, templates=templates, counterfactual=cf)
            if d.n + d.holdout > most:
                raise ConfigError(
                    f"data.n + data.holdout = {d.n + d.holdout} exceeds the {most} distinct pairs task {d.task!r} "
                    f"can draw with {name}'s tokenizer (family {family!r}, counterfactual {cf!r}); lower data.n "
                    "or data.holdout"
                )

    def _make_dataset(self, model, cell: Cell) -> TaskData:
        d = self.config.data
        try:
            return tasks.make(
                d.task, model, d.n + d.holdout, cell.seed,
                templates=None if cell.family == "all" else cell.family,
                counterfactual=cell.counterfactual, noise=cell.noise, prepend_bos=d.prepend_bos,
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"data: the dataset {cell.dataset} cannot be built: {err}") from None

    def split(self, cell: Cell, n_inputs: int) -> tuple[np.ndarray, np.ndarray]:
        """(discovery rows, held-out rows) of the cell's dataset (sorted): the first
        ``data.holdout`` inputs in ``input_order`` are held out of discovery."""
        order = input_order(self.config.seed, cell.dataset, n_inputs)
        held = np.sort(order[: self.config.data.holdout])
        return np.setdiff1d(np.arange(n_inputs), held), held

    def input_rows(self, cell: Cell, n_inputs: int, k: int) -> np.ndarray:
        """The first ``k`` of the cell's dataset's inputs in ``input_order`` (sorted; all for k = 0)."""
        if k == 0 or k >= n_inputs:
            return np.arange(n_inputs)
        return np.sort(input_order(self.config.seed, cell.dataset, n_inputs)[:k])

    # ------------------------------------------------------------------ cells
    def _run(self, rd: RunDir, reporter: Reporter, progress: bool, model, datasets: dict) -> None:
        cfg = self.config
        cells = cfg.cells()
        names = self._names()
        todo = [n for n in names if not rd.is_done(n)]
        reporter.start(len(names), len(names) - len(todo))
        if not todo:
            return
        os.makedirs(rd.file("data"), exist_ok=True)
        for key, data in datasets.items():
            if not os.path.exists(path := rd.file("data", f"{key}.npz")):
                data.save(path)
        datasets = at_one_width(datasets)
        for i, cell in enumerate(cells):
            if rd.is_done(cell.id):
                reporter.cell_cached(i, len(names), cell.id)
                continue
            data = datasets[cell.dataset]
            self._commit(rd, reporter, i, names, lambda work, d=data, c=cell: self._cell(model, d, c, work, progress))
        if cfg.reference.level != "none" and not rd.is_done(REFERENCE):
            first = datasets[cells[0].dataset]
            discovery, _ = self.split(cells[0], len(first))
            rows = discovery[self.input_rows(cells[0], len(discovery), cfg.reference.inputs)]
            compute = lambda work: self._reference(rd, model, _rows(first, rows), rows, work, progress)
            self._commit(rd, reporter, len(cells), names, compute)

    @staticmethod
    def _commit(rd: RunDir, reporter: Reporter, index: int, names: list[str], compute) -> None:
        """Compute one cell into its partial directory and commit it, with its timings, atomically."""
        reporter.cell_start(index, len(names), names[index])
        with Stopwatch() as t, rd.cell(names[index]) as work:
            info = compute(work)
            info.update(seconds=round(t.elapsed, 3), compile_seconds=round(t.compile_seconds, 3))
            write_json(os.path.join(work, "cell.json"), info)
        reporter.cell_end(index, len(names), names[index], info)

    def _attribute(self, model, data, method, steps: int | None, level: str, progress: bool, subset=None, path=None):
        """The scores to be saved at ``path``: scores larger than ``estimator.scores_memory_kib`` go to
        shards in ``<path without .safetensors>-shards/`` beside it as they are computed, and each
        finished batch to ``<…>-checkpoint/`` until the scores are whole (a resume continues there)."""
        e, stem = self.config.estimator, path and path.removesuffix(".safetensors")
        return attribute(
            model, data, method, level=level, steps=steps or 1, ablation=e.ablation,
            ig_convention=e.ig_convention, pooling=e.pooling, batch_size=e.batch_size or None,
            memory_budget=e.memory_budget_mib * 2**20, progress=progress, subset=subset,
            scores_dir=stem and stem + "-shards", checkpoint=stem and stem + "-checkpoint",
            scores_memory=e.scores_memory_kib * 2**10 or None,
        )  # fmt: skip

    def _cell(self, model, data: TaskData, cell: Cell, work: str, progress: bool) -> dict:
        if cell.method in MASK_METHODS:
            return self._mask_cell(model, data, cell, work, progress)
        cfg = self.config
        g = model.graph
        discovery, held = self.split(cell, len(data))
        found_on = _rows(data, discovery)
        path = os.path.join(work, "scores.safetensors")
        laps = _Laps()
        scores = _cached(
            path,
            found_on,
            lambda: self._attribute(model, found_on, cell.method, cell.steps, "edge", progress, path=path),
        )
        laps.lap("scores")
        aggs, sizes, head = cfg.circuits.aggregations, cfg.circuits.sizes, cfg.bootstrap.size
        key = jax.random.key(cfg.seed)
        circuits = self._circuit_files(
            g, work,
            lambda how, n: stats.bootstrap(
                scores, cfg.bootstrap.replicates, n, aggregation=how, key=key, method=cfg.bootstrap.method,
                fraction=cfg.bootstrap.fraction, confidence=cfg.bootstrap.confidence,
            ),
        )  # fmt: skip
        full, aggregated, arrays, head_boot = (
            circuits["full"],
            circuits["aggregated"],
            circuits["arrays"],
            circuits["head"],
        )
        laps.lap("bootstrap")
        variability = stats.edge_variability(scores)
        snr = np.asarray(variability.snr)
        freq = [arrays[f"{how}-n{head}/inclusion_frequency"] for how in aggs]
        _write_edges_csv(os.path.join(work, "edges.csv"), g.edge_names, variability, aggs, aggregated, freq, head)
        circuit_rows = [
            {"aggregation": how, "size": n, "edges": int(full[a, s].sum()), "snr_median": _median(snr[full[a, s]])}
            for a, how in enumerate(aggs)
            for s, n in enumerate(sizes)
        ]
        stability = {}
        if cfg.stability.prompts_needed:
            pn = stats.prompts_needed(
                scores, head, key=jax.random.fold_in(key, 1), aggregation=aggs[0],
                n_replicates=cfg.bootstrap.replicates, confidence=cfg.bootstrap.confidence,
            )  # fmt: skip
            stability["prompts_needed"] = pn.summary()
            laps.lap("prompts_needed")
        ev = self._evaluate_cell(model, data, cell, discovery, held, circuits, work, laps, progress)
        if ev["judged"] is not None and cfg.stability.curve:
            curve = evaluate_curve(
                model, ev["judged"], scores, aggregation=aggs[0], ablation=cfg.estimator.ablation, progress=progress
            )
            ci = (  # intervals over inputs need two of them
                stats.curve_intervals(curve, key=jax.random.fold_in(key, 2), confidence=cfg.bootstrap.confidence)
                if len(ev["judged"]) >= 2
                else None
            )
            stability["curve"] = {"inputs": ev["set"], **curve.summary(), "intervals": ci and ci.summary()}
            laps.lap("curve")
        if ev["judged"] is not None and cfg.stability.faithfulness and head_boot is not None:
            stability["faithfulness"] = self._faithful(model, ev["judged"], head_boot, ev["set"], key, progress)
            laps.lap("faithfulness")
        if stability:
            write_json(os.path.join(work, "stability.json"), stability)
        return self._cell_info(cell, discovery, held, data, circuits, ev, circuit_rows, laps) | {
            "clean_metric_mean": float(np.mean(scores.clean_metric)),
            "estimator_seconds": scores.params.get("seconds"),
        }

    def _mask_cell(self, model, data: TaskData, cell: Cell, work: str, progress: bool) -> dict:
        """A learned-mask cell: ``masks.seeds`` masks on the discovery inputs (their seeds are the
        replicates of bootstrap.json / bootstrap.npz, ranked by α: ``stats.mask_stability``), masks on
        ``masks.replicates`` bootstrap replicates of the inputs (data-to-data stability), and the
        comparison with EAP-IG-inputs' circuit of the same size on the same inputs (``masks.json``)."""
        cfg, mk, g = self.config, self.config.masks, model.graph
        discovery, held = self.split(cell, len(data))
        found_on = _rows(data, discovery)
        laps, key = _Laps(), jax.random.key(cfg.seed)
        head = cfg.bootstrap.size
        learn = functools.partial(
            learn_mask, model, found_on, method=cell.method, target_edges=head, steps=mk.steps, lr=mk.lr,
            lr_lambda=mk.lr_lambda, warmup=mk.warmup, key=key, ablation=cfg.estimator.ablation, progress=progress,
        )  # fmt: skip
        t0 = time.perf_counter()
        seeds = learn(seeds=mk.seeds, checkpoint=os.path.join(work, "masks-seeds.npz"))
        seconds = round(time.perf_counter() - t0, 3)
        laps.lap("masks")
        out = {"seeds": seeds.summary(), "seconds": seconds, "graph": g.config_dict()}
        if mk.replicates >= 2:
            data_reps = learn(
                seeds=range(mk.seeds, mk.seeds + mk.replicates), resample=True,
                checkpoint=os.path.join(work, "masks-data.npz"),
            )  # fmt: skip
            out["data_replicates"] = data_reps.summary()
            out["data_to_data"] = stats.mask_stability(
                data_reps, key=key, confidence=cfg.bootstrap.confidence
            ).summary()
            laps.lap("data_replicates")
        _save_npz(os.path.join(work, "masks.npz"), {"seed_logits": seeds.logits, "seeds": seeds.seeds} | (
            {"replicate_logits": data_reps.logits, "replicate_weights": data_reps.input_weights}
            if mk.replicates >= 2 else {}))  # fmt: skip
        circuits = self._circuit_files(
            g, work, lambda how, n: stats.mask_stability(seeds, n, key=key, confidence=cfg.bootstrap.confidence)
        )
        out["seed_to_seed"] = circuits["head"].summary()
        laps.lap("bootstrap")
        # the attribution estimator at the same size, on the same inputs
        steps = next((s for m, s in cfg.estimators if m == "eap-ig-inputs"), cfg.estimator.steps[0])
        ig = self._attribute(model, found_on, "eap-ig-inputs", steps, "edge", progress)
        ig_circuit = select(ig, head, aggregation=cfg.circuits.aggregations[0])
        learned = seeds.masks(head)
        judged_rows = held if held.size else discovery
        ev = evaluate(model, _rows(data, judged_rows), np.concatenate([ig_circuit.edges[None], learned]),
                      ablation=cfg.estimator.ablation, progress=progress).summary()  # fmt: skip
        overlap = np.asarray(stats.jaccard_matrix(np.concatenate([ig_circuit.edges[None], learned])))[0, 1:]
        out["compare"] = {
            "estimator": estimator_label("eap-ig-inputs", steps), "size": head,
            "inputs": "held-out" if held.size else "in-sample", "n_inputs": int(judged_rows.size),
            "estimator_faithfulness": ev[0]["faithfulness"], "estimator_edges": ev[0]["n_edges"],
            "mask_faithfulness": [r["faithfulness"] for r in ev[1:]], "mask_edges": [r["n_edges"] for r in ev[1:]],
            "overlap_jaccard": overlap.tolist(), "overlap_jaccard_mean": float(overlap.mean()),
        }  # fmt: skip
        laps.lap("compare")
        write_json(os.path.join(work, "masks.json"), out)
        ev = self._evaluate_cell(model, data, cell, discovery, held, circuits, work, laps, progress)
        circuit_rows = [
            {"aggregation": how, "size": n, "edges": int(circuits["full"][a, s].sum()), "snr_median": None}
            for a, how in enumerate(cfg.circuits.aggregations)
            for s, n in enumerate(cfg.circuits.sizes)
        ]
        info = self._cell_info(cell, discovery, held, data, circuits, ev, circuit_rows, laps)
        info["headline"] += (
            f"; EAP-IG at n={head}: faithfulness {out['compare']['estimator_faithfulness']:.3f} vs masks "
            f"{np.median(out['compare']['mask_faithfulness']):.3f} (median over seeds), overlap "
            f"{out['compare']['overlap_jaccard_mean']:.3f}"
        )
        return info | {"clean_metric_mean": ev["full_metric"], "estimator_seconds": seconds}

    def _circuit_files(self, g, work: str, replicates) -> dict:
        """``replicates(aggregation, n)`` (a BootstrapResult) at every (aggregation, size) of the config,
        written to bootstrap.json / bootstrap.npz / circuits.npz / circuits/*.json."""
        cfg = self.config
        aggs, sizes, head = cfg.circuits.aggregations, cfg.circuits.sizes, cfg.bootstrap.size
        full = np.zeros((len(aggs), len(sizes), g.n_edges), bool)
        majority = np.zeros_like(full)
        aggregated = np.zeros((len(aggs), g.n_edges), np.float32)
        boot_rows, arrays, head_boot = [], {}, None
        for a, how in enumerate(aggs):
            for s, n in enumerate(sizes):
                b = replicates(how, n)
                full[a, s], majority[a, s], aggregated[a] = b.full_circuit, b.majority_circuit, b.full_aggregate
                summary = b.summary()
                if summary["aggregation"] != how:  # learned masks: ranked by their logits, whatever the aggregation
                    summary["ranked_by"] = summary.pop("aggregation")
                boot_rows.append({"aggregation": how, "size": n, **summary})
                tag = f"{how}-n{n}"
                if cfg.stability.margins and b.score_ci_percentile is not None:
                    sel = stats.selection_noise(b, cfg.bootstrap.confidence)
                    boot_rows[-1]["selection"] = sel.summary()
                    if n == head:
                        arrays[f"{tag}/margin"] = sel.margin.astype(np.float32)
                        arrays[f"{tag}/unpruned_inclusion"] = sel.observed_inclusion.astype(np.float32)
                arrays |= {
                    f"{tag}/jaccard": b.jaccard.astype(np.float32),
                    f"{tag}/node_jaccard": b.node_jaccard.astype(np.float32),
                    f"{tag}/jaccard_to_full": b.jaccard_to_full,
                    f"{tag}/jaccard_to_majority": b.jaccard_to_majority,
                    f"{tag}/sizes": b.sizes,
                    f"{tag}/inclusion_frequency": b.inclusion_frequency.astype(np.float32),
                }
                if n == head:
                    arrays[f"{tag}/circuits_packed"] = np.packbits(b.circuits, axis=1)
                if (a, n) == (0, head):
                    head_boot = b  # the headline circuit's replicates (first aggregation)
        write_json(os.path.join(work, "bootstrap.json"), boot_rows)
        _save_npz(os.path.join(work, "bootstrap.npz"), arrays)
        _save_npz(
            os.path.join(work, "circuits.npz"),
            {"full_packed": np.packbits(full, axis=-1), "majority_packed": np.packbits(majority, axis=-1),
             "aggregated": aggregated, "n_edges": np.array(g.n_edges)},
        )  # fmt: skip
        os.makedirs(os.path.join(work, "circuits"), exist_ok=True)
        s_head = sizes.index(head)
        for a, how in enumerate(aggs):
            path = os.path.join(work, "circuits", f"{how}-n{head}.json")
            Circuit(g, full[a, s_head], scores=aggregated[a]).to_graph_json(path)
        headline = next(r for r in boot_rows if r["size"] == head and r["aggregation"] == aggs[0])
        return {"full": full, "majority": majority, "aggregated": aggregated, "arrays": arrays, "head": head_boot,
                "headline": headline}  # fmt: skip

    def _evaluate_cell(self, model, data, cell, discovery, held, circuits, work, laps, progress) -> dict:
        """Every full-data circuit and the headline majority circuits evaluated held out and in sample
        (``evaluation.json``); the inputs judged and the headline faithfulness."""
        cfg, g = self.config, model.graph
        aggs, sizes, head = cfg.circuits.aggregations, cfg.circuits.sizes, cfg.bootstrap.size
        out = {"judged": None, "set": None, "faith": None, "faith_se": None, "faith_in": None, "eval_rows": None,
               "text": "", "full_metric": None}  # fmt: skip
        if not cfg.circuits.evaluate:
            return out
        full, majority, s_head = circuits["full"], circuits["majority"], sizes.index(head)
        eval_rows = discovery[self.input_rows(cell, len(discovery), cfg.circuits.eval_inputs)]
        masks = np.concatenate([full.reshape(-1, g.n_edges), majority[:, s_head]])
        labels = [(how, n, "full") for how in aggs for n in sizes] + [(how, head, "majority") for how in aggs]
        sets = ([("held-out", held)] if held.size else []) + [("in-sample", eval_rows)]
        # one evaluation of both input sets (one set of kernels and calls), then split by set
        every = evaluate(
            model, _rows(data, np.concatenate([rows for _, rows in sets])), masks, ablation=cfg.estimator.ablation,
            progress=progress,
        )  # fmt: skip
        ends = np.cumsum([len(rows) for _, rows in sets])
        evaluation = []
        for (name, rows), end in zip(sets, ends, strict=True):
            ev = every.on_inputs(slice(end - len(rows), end))
            evaluation += [
                {"aggregation": h, "size": n, "circuit": kind, "inputs": name, "n_inputs": len(rows), **r}
                for (h, n, kind), r in zip(labels, ev.summary(), strict=True)
            ]
        write_json(os.path.join(work, "evaluation.json"), evaluation)
        laps.lap("evaluation")
        at_head = {
            r["inputs"]: r
            for r in evaluation
            if r["size"] == head and r["aggregation"] == aggs[0] and r["circuit"] == "full"
        }
        e = at_head[sets[0][0]]
        out.update(
            faith=e["faithfulness"], faith_se=e.get("faithfulness_se"), faith_in=at_head["in-sample"]["faithfulness"],
            eval_rows=eval_rows, judged=_rows(data, sets[0][1]), set=sets[0][0], full_metric=e["full_metric"],
        )  # fmt: skip
        out["text"] = f"; faithfulness {plus_minus(out['faith'], out['faith_se'])} ({sets[0][0]}"
        out["text"] += f"; in sample {out['faith_in']:.3f})" if held.size else ")"
        return out

    def _cell_info(self, cell, discovery, held, data, circuits, ev, circuit_rows, laps) -> dict:
        """The cell.json record (timings and checksums are added by ``_run_cell``)."""
        cfg, headline = self.config, circuits["headline"]
        return {
            "cell": cell.id,
            "levels": cell.levels,
            "estimator_settings": cfg.estimator_settings(cell.method, cell.steps),
            "dataset": cell.dataset,
            "n_inputs": len(discovery),
            "discovery_inputs": discovery.tolist(),
            "held_out_inputs": held.tolist(),
            "n_positions": data.n_positions,
            "eval_inputs": None if ev["eval_rows"] is None else ev["eval_rows"].tolist(),
            "mean_jaccard": headline["mean_jaccard"],
            "faithfulness": ev["faith"],
            "faithfulness_se": ev["faith_se"],
            "faithfulness_in_sample": ev["faith_in"],
            "circuits": circuit_rows,
            "verdict": headline["verdict"],
            "headline": f"top-{cfg.bootstrap.size}: {headline['verdict']}" + ev["text"],
            "phase_seconds": laps.seconds,
        }

    def _faithful(self, model, data: TaskData, boot, inputs: str, key, progress: bool) -> dict:
        """Stability at fixed faithfulness: the first ``stability.faithfulness_replicates`` replicates
        of the headline bootstrap, their pruned top-n circuits over the size grid, evaluated on
        ``data``; one ``stats.faithful_stability`` per target."""
        st, g = self.config.stability, model.graph
        grid = np.array(st.faithfulness_sizes or _doubling(max(self.config.circuits.sizes), g.n_edges))
        agg = boot.aggregated[: st.faithfulness_replicates]
        masks = np.stack([np.asarray(prune(g, topn(agg, int(n))[0])[0]) for n in grid], axis=1)  # [B, S, E]
        B, S = masks.shape[:2]
        ev = evaluate(model, data, masks.reshape(B * S, -1), ablation=self.config.estimator.ablation, progress=progress)
        faith = np.asarray(ev.faithfulness).reshape(B, S)
        targets = [
            stats.faithful_stability(masks, faith, grid, f, key=jax.random.fold_in(key, 3), confidence=boot.confidence)
            for f in st.faithfulness
        ]
        return {"inputs": inputs, "aggregation": boot.aggregation, "targets": [t.summary() for t in targets]}

    def _reference(self, rd: RunDir, model, data: TaskData, rows: np.ndarray, work: str, progress: bool) -> dict:
        """Exact node scores on ``data`` (the first cell's dataset's inputs ``rows``) with every
        estimator's node scores of them, and exact scores of ``reference_edges``."""
        cfg = self.config
        files = [("exact-node", "exact", None, "node", None)]  # (file name, method, steps, level, edge subset)
        files += [(f"{estimator_label(m, s)}-node", m, s, "node", None) for m, s in cfg.scored_estimators]
        subset, top = self.reference_edges(rd, model.graph.n_edges)
        if len(subset):
            every = len(subset) == model.graph.n_edges
            files.append(("exact-edge", "exact", None, "edge", None if every else subset))
            np.save(os.path.join(work, "edge-subset.npy"), subset)
            np.save(os.path.join(work, "edge-top.npy"), top)
        for name, method, steps, level, edges in files:
            path = os.path.join(work, f"{name}.safetensors")
            compute = functools.partial(self._attribute, model, data, method, steps, level, progress, edges, path)
            _cached(path, data, compute)
        return {
            "cell": REFERENCE,
            "dataset": cfg.cells()[0].dataset,
            "n_inputs": len(data),
            "inputs": rows.tolist(),
            "estimator_settings": {
                estimator_label(m, s): cfg.estimator_settings(m, s) for m, s in cfg.scored_estimators
            },
            "level": cfg.reference.level,
            "edges": len(subset),
            "top_edges": len(top),
            "files": sorted(name for name, *_ in files),
            "headline": f"exact node scores of {len(data)} inputs"
            + (f" and {len(subset)} edges" if len(subset) else ""),
        }

    def reference_edges(self, rd: RunDir | None, n_edges: int) -> tuple[np.ndarray, np.ndarray]:
        """(every edge the reference scores exactly, the top-k ones among them), sorted: ``reference.
        edges`` random edges (``default_rng(seed)``; -1: all) and the union over the estimators of
        their ``reference.top_k`` edges by |mean score| on the first cell's discovery inputs (read from
        ``rd``, which only top-k needs)."""
        r, cells = self.config.reference, self.config.cells()
        top = np.zeros(0, np.int64)
        for c in (
            (c for c in cells if c.dataset == cells[0].dataset and c.method not in MASK_METHODS) if r.top_k else ()
        ):
            scores = Scores.load(os.path.join(rd.cell_dir(c.id), "scores.safetensors"))
            strength = np.concatenate(
                [np.abs(b.astype(np.float64).mean(0)) for _, b in column_blocks(scores.per_input)]
            )
            top = np.union1d(top, np.argsort(-strength, kind="stable")[: r.top_k])
        if r.edges == ALL_EDGES:
            return np.arange(n_edges), top
        rng = np.random.default_rng(self.config.seed)
        random = rng.choice(n_edges, r.edges, replace=False) if r.edges else np.zeros(0, np.int64)
        return np.union1d(random, top).astype(np.int64), top.astype(np.int64)


def input_order(seed: int, dataset: str, n_inputs: int) -> np.ndarray:
    """The study's random order of a dataset's inputs: ``default_rng([seed, crc32(dataset)])``'s
    permutation of ``n_inputs`` (``dataset``: ``Cell.dataset``)."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode())]).permutation(n_inputs)


class _Laps:
    """Seconds between successive ``lap(name)`` calls: the parts of a cell, for its cell.json."""

    def __init__(self):
        self.t, self.seconds = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.t = round(now - self.t, 3), now


def at_one_width(datasets: dict[str, TaskData]) -> dict[str, TaskData]:
    """Every dataset of a study padded to the widest: its cells reuse one set of compiled kernels."""
    width = max(data.n_positions for data in datasets.values())
    return {key: data.pad(width) for key, data in datasets.items()}


def _rows(data: TaskData, rows: np.ndarray) -> TaskData:
    """Inputs ``rows`` of ``data`` at its width (not trimmed to theirs: one width, one compilation)."""
    return data[rows].pad(data.n_positions)


def _doubling(start: int, n_edges: int) -> list[int]:
    """``start`` × 2^k for k = 0 … 4, at most ``n_edges``, distinct."""
    return sorted({min(start * 2**k, n_edges) for k in range(5)})


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _cached(path: str, data: TaskData, compute) -> Scores:
    """The scores saved at ``path`` by an interrupted run, if they are whole and of these inputs;
    else ``compute()``'s, saved there."""
    if os.path.exists(path):
        with contextlib.suppress(ValueError):  # a partly written file
            scores = Scores.load(path)
            if scores.uid is not None and np.array_equal(scores.uid, data.uid):
                return scores
    scores = compute()
    scores.save(path)
    return scores


def _save_npz(path: str, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _write_edges_csv(path, names, var, aggs, aggregated, freq, head) -> None:
    cols = ["edge", "mean", "std", "cv", "snr", "sign_agreement", "n_needed"]
    cols += [f"score_{h}" for h in aggs] + [f"frequency_{h}_n{head}" for h in aggs]
    numeric = [var.mean, var.std, var.cv, var.snr, var.sign_agreement, var.n_needed, *aggregated, *freq]
    table = np.stack([np.asarray(c, np.float64) for c in numeric], 1)
    lines = [",".join(cols)]
    lines += [n + "," + ",".join(f"{v:.6g}" for v in row) for n, row in zip(names, table, strict=True)]
    atomic_write_text(path, "\n".join(lines) + "\n")
