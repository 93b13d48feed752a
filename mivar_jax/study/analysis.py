"""Study-level analysis, rebuilt from the finished cells of a run directory into ``results/``.

- ``summary.csv`` / ``summary.json``: one row per cell × aggregation × circuit size: the cell's
  levels and estimator settings, the bootstrap's stability (mean pairwise Jaccard with its
  Monte-Carlo interval over the B replicates ``jaccard_mc_low``/``_high`` — it shrinks as B grows
  and says nothing about data uncertainty —, the CV of the pairwise Jaccards, replicate circuits
  empty after pruning ``n_empty``, replicates with ties at the top-n cut, Jaccard to the full-data
  circuit, sizes, verdict), the median signal-to-noise ratio |mean|/std of the full-data
  circuit's edges (``snr_median``; never a mean of CVs, which explode as a mean nears 0), and
  the full-data circuit's evaluation on ``eval_inputs`` inputs (faithfulness, circuit error over
  the task's answers and over the vocabulary, each with its standard error ``_se`` over those
  inputs, KL).
- ``perturbations.json``: the full-data circuits (headline size) of every pair of cells compared
  (C × C Jaccard matrix), and for each grid factor the mean Jaccard over the pairs of cells that
  differ in that factor only: the circuit's stability under dataset resampling (``seed``),
  paraphrasing (``family``), counterfactual type, noise and estimator.
- ``decomposition.json``: variance decompositions (``mivar_jax.stats.decompose``) over the grid
  factors that have ≥ 2 levels (crossed, with ``aggregation`` and ``size`` where they vary) of
  (a) aggregated edge scores, (b) circuit membership indicators (edges in no circuit carry no
  variance and are left out), (c) scalar outcomes (mean Jaccard, faithfulness, circuit error) —
  (a)–(c) in factorial designs only; and (d) nested: membership at the headline size between cells vs.
  between bootstrap replicates within a cell, over all cells and (``membership_nested_<factor>``)
  over the cells along each factor (the first cell and the cells differing from it in that factor
  only: in a one-at-a-time design, the base cell and that factor's other levels).
- ``estimator_noise.json``: each estimator against the exact reference (``mivar_jax.stats.
  estimator_noise``), at node level and on the reference's edges.
- ``intrinsic.json``: the intrinsic variance of the reference's exact single-input edge scores
  (``stats.edge_variability``): per edge, and summarised over the estimators' top edges (``top``)
  and the reference's other edges (``random``: the random sample, or every other edge with
  ``reference.edges = -1``): CV, signal-to-noise, sign agreement, inputs needed.
- ``stability.json``: per cell, what ``[stability]`` asked for (docs/statistics.md): the prompts
  needed for a stable headline circuit, MIB's curve with CPR / CMD intervals, and the stability of
  the smallest circuits reaching each faithfulness target, with the frontier. The summary also
  gives each circuit's margins to the cut (implied vs unpruned observed Jaccard, contested edges).

Circuits are discovered on ``data.n`` prompts and evaluated on ``data.holdout`` more, held out
(``eval_set`` "held-out"); the ``_in_sample`` columns evaluate on discovery prompts, for the optimism.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import zipfile
import zlib

import numpy as np

from mivar_jax import stats
from mivar_jax._io import atomic_write_text
from mivar_jax.masks import MASK_METHODS
from mivar_jax.scores import Scores
from mivar_jax.study.config import REFERENCE, StudyConfig, estimator_label
from mivar_jax.study.rundir import RunDir, RunDirError, read_json, write_json

OUTCOMES = ("mean_jaccard", "faithfulness", "circuit_error_task")
SUMMARY_COLUMNS = (
    "cell", "label", "seed", "family", "counterfactual", "noise", "estimator", "ablation", "ig_convention", "pooling",
    "aggregation", "size", "n_edges_mean", "mean_jaccard", "jaccard_mc_low", "jaccard_mc_high", "jaccard_cv",
    "n_replicates", "n_empty", "replicates_with_cut_ties", "mean_jaccard_to_full", "mean_node_jaccard", "stable", "snr_median",
    "eval_inputs", "eval_set", "faithfulness", "faithfulness_se", "circuit_error_task", "circuit_error_task_se",
    "circuit_error_vocab", "circuit_error_vocab_se", "kl", "faithfulness_in_sample", "faithfulness_in_sample_se",
    "circuit_error_task_in_sample", "kl_in_sample", "implied_jaccard", "unpruned_jaccard", "relative_se",
    "contested_edges", "contested_share", "verdict",
)  # fmt: skip
EVALUATION_KEYS = SUMMARY_COLUMNS[SUMMARY_COLUMNS.index("faithfulness") : SUMMARY_COLUMNS.index("kl") + 1]
IN_SAMPLE = {"faithfulness_in_sample": "faithfulness", "faithfulness_in_sample_se": "faithfulness_se",
             "circuit_error_task_in_sample": "circuit_error_task", "kl_in_sample": "kl"}  # fmt: skip
JACCARD_INTERVAL = "Monte-Carlo interval over the B replicates"  # what jaccard_mc_low/high are


@dataclasses.dataclass
class StudyResults:
    """The study-level results of a run directory (also written to ``results/``)."""

    config: StudyConfig
    rows: list[dict]
    perturbations: dict
    decomposition: dict
    estimator_noise: dict
    cells: list[dict]
    stability: dict = dataclasses.field(default_factory=dict)  # cell id → its stability.json

    def headline_rows(self) -> list[dict]:
        """The summary rows at the headline size with the first aggregation: one per cell."""
        head = (self.config.circuits.aggregations[0], self.config.bootstrap.size)
        return [r for r in self.rows if (r["aggregation"], r["size"]) == head]

    @property
    def verdict(self) -> str:
        rows = self.headline_rows()
        n_stable = sum(r["stable"] for r in rows)
        j = np.array([r["mean_jaccard"] for r in rows])
        word = "stable" if n_stable == len(rows) else "unstable" if n_stable == 0 else "mixed"
        word = "undetermined" if any(r["verdict"].startswith("undetermined") for r in rows) else word
        text = (
            f"{word}: the top-{self.config.bootstrap.size} circuit is stable under bootstrap in {n_stable} of "
            f"{len(rows)} cells (mean pairwise Jaccard {j.min():.3f} … {j.max():.3f}; the bar: ≥ 0.8 with B ≥ 100"
            f", here B = {_span(r.get('n_replicates') or self.config.bootstrap.replicates for r in rows)})"
        )
        if across := self.perturbations.get("mean_by_factor", {}):
            text += "; across the grid: " + ", ".join(f"{k} {v:.3f}" for k, v in across.items())
        return text


def _span(values) -> str:
    """``7`` or ``2 … 100``: the range of integers."""
    v = sorted(set(values))
    return f"{v[0]}" if len(v) == 1 else f"{v[0]} … {v[-1]}"


def plus_minus(value: float | None, se: float | None, digits: int = 3) -> str:
    """``0.815 ± 0.012`` (the value alone without a finite standard error; "–" without a value)."""
    if value is None or not np.isfinite(value):
        return "–"
    if se is None or not np.isfinite(se):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def cell_labels(cfg: StudyConfig) -> dict[str, str]:
    """Short names of the cells for figures and tables: the levels of the factors that vary."""
    varying = [f for f, levels in cfg.factors().items() if len(levels) > 1]
    if cfg.design == "one-at-a-time":  # the base cell, or the one level that differs from it
        base = cfg.cells()[0]
        return {c.id: _changed(base, c) for c in cfg.cells()}
    return {c.id: "·".join(str(c.levels[f]) for f in varying) or c.id for c in cfg.cells()}


def changed_levels(base, cell) -> dict:
    """The factors ``cell`` changes from ``base`` and its levels of them (empty for the base)."""
    return {f: v for f, v in cell.levels.items() if v != base.levels[f]}


def _changed(base, cell) -> str:
    diff = list(changed_levels(base, cell).items())
    if not diff:
        return "base"
    f, v = diff[0]
    return f"{f} {v}" if f in ("seed", "noise") else str(v)


def analyse(rd: RunDir) -> StudyResults:
    """Rebuild ``results/`` from the finished cells, after checking each against its checksums
    (a damaged or unreadable file is a ``RunDirError`` naming it and the fix)."""
    cfg = rd.config
    cells = cfg.cells()
    if missing := [c.id for c in cells if not rd.is_done(c.id)]:
        raise RuntimeError(f"{len(missing)} cells are not complete (e.g. {missing[0]}); resume the run first")
    for name in [c.id for c in cells] + ([REFERENCE] if rd.is_done(REFERENCE) else []):
        if problems := rd.check_cell(name):
            rel, why = problems[0]
            raise RunDirError(f"{os.path.join(rd.cell_dir(name), rel)} is damaged ({why}); {rd.fix_hint()}")
    os.makedirs(rd.file("results"), exist_ok=True)
    infos = [read_cell_file(rd, os.path.join(rd.cell_dir(c.id), "cell.json")) for c in cells]
    for info in infos:
        info.pop("checksums", None)
    rows = _summary_rows(rd, cfg, cells, infos)
    write_json(rd.file("results", "summary.json"), rows)
    _write_csv(rd.file("results", "summary.csv"), rows, SUMMARY_COLUMNS)

    head = cfg.circuits.sizes.index(cfg.bootstrap.size)
    zs = [read_cell_file(rd, os.path.join(rd.cell_dir(c.id), "circuits.npz"), load_npz) for c in cells]
    full = np.stack([np.unpackbits(z["full_packed"], axis=-1, count=int(z["n_edges"])).astype(bool) for z in zs])
    aggregated = np.stack([z["aggregated"] for z in zs])  # full: [C, A, S, E], aggregated: [C, A, E]
    perturbations = _perturbations(cfg, cells, full[:, 0, head])
    write_json(rd.file("results", "perturbations.json"), perturbations)
    decomposition = _decompositions(rd, cfg, cells, rows, full, aggregated)
    write_json(rd.file("results", "decomposition.json"), decomposition)
    noise = _estimator_noise(rd, cfg, cells) if rd.is_done(REFERENCE) else {}
    write_json(rd.file("results", "estimator_noise.json"), noise)
    write_json(rd.file("results", "intrinsic.json"), _intrinsic(rd) if rd.is_done(REFERENCE) else {})
    stability = {}
    for c in cells:
        if os.path.exists(path := os.path.join(rd.cell_dir(c.id), "stability.json")):
            stability[c.id] = read_cell_file(rd, path)
    write_json(rd.file("results", "stability.json"), stability)
    results = StudyResults(cfg, rows, perturbations, decomposition, noise, infos, stability)
    write_json(rd.file("results", "study.json"), {"verdict": results.verdict, "name": cfg.name, "cells": infos})
    return results


def read_cell_file(rd: RunDir, path: str, load=read_json):
    """``load(path)`` of a cell's file; one that cannot be read (possible only in a run without
    checksums, or damaged since the check) is a ``RunDirError`` naming it and the fix."""
    try:
        return load(path)
    except RunDirError as err:
        raise RunDirError(f"{err}; {rd.fix_hint()}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise RunDirError(f"{path} is unreadable ({type(err).__name__}: {err}); {rd.fix_hint()}") from None


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read now (so a damaged member fails here)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _summary_rows(rd: RunDir, cfg: StudyConfig, cells, infos: list[dict]) -> list[dict]:
    rows, labels = [], cell_labels(cfg)
    for c, info in zip(cells, infos, strict=True):
        folder = rd.cell_dir(c.id)
        boots = read_cell_file(rd, os.path.join(folder, "bootstrap.json"))
        ev_path = os.path.join(folder, "evaluation.json")
        ev_rows = read_cell_file(rd, ev_path) if os.path.exists(ev_path) else []
        by_set: dict[str, dict] = {}  # runs before held-out evaluation have no "inputs": in sample
        for r in ev_rows:
            if r["circuit"] == "full":
                by_set.setdefault(r.get("inputs", "in-sample"), {})[(r["aggregation"], r["size"])] = r
        eval_set = "held-out" if "held-out" in by_set else "in-sample" if by_set else None
        evals = by_set.get(eval_set, {})
        in_sample = by_set.get("in-sample", {}) if eval_set == "held-out" else {}
        snr = {(r["aggregation"], r["size"]): r["snr_median"] for r in info.get("circuits", [])}
        settings = info.get("estimator_settings") or cfg.estimator_settings(c.method, c.steps)
        eval_inputs = info.get("eval_inputs")
        for b in boots:
            e = evals.get((b["aggregation"], b["size"]), {})
            e_in = in_sample.get((b["aggregation"], b["size"]), {})
            sel = b.get("selection") or {}
            lo, hi = b["jaccard_ci_percentile"]["mean_jaccard"]
            rows.append(
                {
                    "cell": c.id,
                    "label": labels[c.id],
                    **c.levels,
                    **{k: settings.get(k) for k in ("ablation", "ig_convention", "pooling")},
                    "aggregation": b["aggregation"],
                    "size": b["size"],
                    "n_edges_mean": b["size_mean"],
                    "mean_jaccard": b["mean_jaccard"],
                    "jaccard_mc_low": lo,
                    "jaccard_mc_high": hi,
                    "jaccard_interval": JACCARD_INTERVAL,
                    "jaccard_cv": b["jaccard_cv"],
                    "n_replicates": b.get("n_replicates"),  # B: bootstrap replicates, or a mask cell's seeds
                    **{k: b.get(k) for k in ("n_empty", "replicates_with_cut_ties")},  # absent in older runs
                    **{k: b[k] for k in ("mean_jaccard_to_full", "mean_node_jaccard", "stable")},
                    "snr_median": snr.get((b["aggregation"], b["size"])),
                    "eval_inputs": e.get("n_inputs", None if eval_inputs is None else len(eval_inputs)),
                    "eval_set": eval_set,
                    **{k: e.get(k) for k in EVALUATION_KEYS},
                    **{column: e_in.get(k) for column, k in IN_SAMPLE.items()},
                    "implied_jaccard": sel.get("implied_jaccard"),
                    "unpruned_jaccard": sel.get("observed_jaccard"),
                    "relative_se": sel.get("relative_se"),
                    "contested_edges": sel.get("n_contested"),
                    "contested_share": sel.get("contested_share"),
                    "verdict": b["verdict"],
                }
            )
    return rows


def _write_csv(path: str, rows: list[dict], columns) -> None:
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        text = str(v)
        return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text

    lines = [",".join(columns)] + [",".join(fmt(r.get(k)) for k in columns) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _perturbations(cfg: StudyConfig, cells, circuits_CxE: np.ndarray) -> dict:
    factors = cfg.factors()
    j = np.asarray(stats.jaccard_matrix(circuits_CxE))
    coords = [tuple(c.levels.values()) for c in cells]
    by_factor = {}
    for f, name in enumerate(factors):
        pairs = [
            j[a, b]
            for a, b in itertools.combinations(range(len(coords)), 2)
            if [i for i in range(len(factors)) if coords[a][i] != coords[b][i]] == [f]
        ]
        if pairs:
            by_factor[name] = float(np.mean(pairs))
    return {
        "size": cfg.bootstrap.size,
        "aggregation": cfg.circuits.aggregations[0],
        "cells": [c.id for c in cells],
        "labels": list(cell_labels(cfg).values()),
        "jaccard": j.tolist(),
        "mean_by_factor": by_factor,
    }


def _crossed(values: np.ndarray, names: list[str]) -> dict:
    """``decompose`` over the factors with ≥ 2 levels (the others are squeezed out)."""
    keep = [i for i, n in enumerate(values.shape[: len(names)]) if n >= 2]
    if not keep:
        return {"skipped": "no factor of the grid has two or more levels"}
    drop = tuple(i for i in range(len(names)) if i not in keep)
    return stats.decompose(values.squeeze(axis=drop), [names[i] for i in keep], design="crossed").to_json()


def _decompositions(rd, cfg: StudyConfig, cells, rows, full, aggregated) -> dict:
    out = _crossed_decompositions(cfg, rows, full, aggregated) if cfg.design == "factorial" else {}
    # (d) nested: cells, then bootstrap replicates within a cell, at the headline size
    if len(cells) < 2:
        out["membership_nested"] = {"skipped": "one cell: no between-cell variation to compare"}
        return out
    if any(c.method in MASK_METHODS for c in cells):
        out["membership_nested"] = {"skipped": "learned-mask cells have seeds, not bootstrap replicates, to nest"}
        return out
    key = f"{cfg.circuits.aggregations[0]}-n{cfg.bootstrap.size}/circuits_packed"
    zs = (read_cell_file(rd, os.path.join(rd.cell_dir(c.id), "bootstrap.npz"), load_npz) for c in cells)
    reps = np.stack([np.unpackbits(z[key], axis=1, count=full.shape[-1]).astype(bool) for z in zs])  # [C, B, E]
    out["membership_nested"] = _nested(reps, "cell")
    # per factor: the cells that differ from the first cell in that factor only (and the first cell)
    base = cells[0].levels
    for f in cfg.factors():
        along = [i for i, c in enumerate(cells) if all(v == base[g] for g, v in c.levels.items() if g != f)]
        if len(along) >= 2 and len(along) < len(cells):
            out[f"membership_nested_{f}"] = _nested(reps[along], f)
    return out


def _nested(reps_CxBxE: np.ndarray, factor: str) -> dict:
    used = reps_CxBxE.reshape(-1, reps_CxBxE.shape[-1]).any(0)
    if not used.any():
        return {"skipped": "every replicate circuit is empty: no membership to decompose"}
    return stats.decompose(reps_CxBxE[..., used].astype(np.float64), [factor, "replicate"], design="nested").to_json()


def _crossed_decompositions(cfg: StudyConfig, rows, full, aggregated) -> dict:
    factors = cfg.factors()
    names, shape = list(factors), tuple(len(v) for v in factors.values())
    A, S = len(cfg.circuits.aggregations), len(cfg.circuits.sizes)
    # (a) aggregated scores [*grid, A, E]
    out = {"aggregated_scores": _crossed(aggregated.reshape(shape + (A, -1)), names + ["aggregation"])}
    # (b) membership [*grid, A, S, E'] over the edges in any circuit
    used = full.reshape(-1, full.shape[-1]).any(0)
    member = full[..., used].astype(np.float64).reshape(shape + (A, S, -1))
    out["membership"] = _crossed(member, names + ["aggregation", "size"])
    # (c) scalar outcomes [*grid, A, S]
    for outcome in OUTCOMES:
        vals = np.array([r[outcome] for r in rows], np.float64)  # None → NaN
        if np.isnan(vals).any():
            out[outcome] = {"skipped": f"{outcome} was not computed in every cell"}
            continue
        out[outcome] = _crossed(vals.reshape(shape + (A, S)), names + ["aggregation", "size"])
    return out


def _intrinsic(rd: RunDir) -> dict:
    """Intrinsic variance of the reference's exact edge scores, per edge and summarised over the
    estimators' top edges (``top``) and the others (``random``)."""
    ref = rd.cell_dir(REFERENCE)
    if not os.path.exists(edge_path := os.path.join(ref, "exact-edge.safetensors")):
        return {}
    subset = read_cell_file(rd, os.path.join(ref, "edge-subset.npy"), np.load)
    top_path = os.path.join(ref, "edge-top.npy")
    top = read_cell_file(rd, top_path, np.load) if os.path.exists(top_path) else np.zeros(0, np.int64)
    exact = read_cell_file(rd, edge_path, Scores.load)
    every = len(subset) == exact.n_items  # then read in column blocks (scores on disk stay there)
    var = stats.edge_variability(exact.per_input if every else exact.per_input[:, subset])
    is_top = np.isin(subset, top)
    out = {"n_inputs": var.n_inputs, "edges": subset.tolist(), "top": is_top.tolist(), **var.to_json()}
    out["summary"] = {
        name: _variability_summary(var, pick)
        for name, pick in (("top", is_top), ("random", ~is_top), ("all", np.ones_like(is_top)))
        if pick.any()
    }
    return out


def _variability_summary(var, pick: np.ndarray) -> dict:
    finite = lambda x: x[np.isfinite(x)]
    med = lambda x: float(np.median(finite(x))) if finite(x).size else None
    nonzero = pick & (var.mean != 0)
    return {
        "edges": int(pick.sum()),
        "zero_edges": int((pick & (var.mean == 0) & (var.std == 0)).sum()),  # no effect on any input
        "cv_median": med(var.cv[nonzero]),
        "snr_median": med(var.snr[nonzero]),
        "sign_agreement_median": med(var.sign_agreement[nonzero]),
        "share_sign_agreement_below_0.8": float((var.sign_agreement[nonzero] < 0.8).mean()) if nonzero.any() else None,
        "inputs_needed_median": med(var.n_needed[nonzero]),
    }


def _estimator_noise(rd: RunDir, cfg: StudyConfig, cells) -> dict:
    ref = rd.cell_dir(REFERENCE)
    exact = read_cell_file(rd, os.path.join(ref, "exact-node.safetensors"), Scores.load)
    node_sizes = tuple(n for n in (5, 10, 20, 50) if n <= exact.per_input.shape[1])
    out = {"node": {}, "edge": {}}
    for method, steps in cfg.scored_estimators:
        label = estimator_label(method, steps)
        approx = read_cell_file(rd, os.path.join(ref, f"{label}-node.safetensors"), Scores.load)
        out["node"][label] = stats.estimator_noise(approx, exact, n_edges=node_sizes).summary()
    edge_path = os.path.join(ref, "exact-edge.safetensors")
    if os.path.exists(edge_path):
        subset = read_cell_file(rd, os.path.join(ref, "edge-subset.npy"), np.load)
        exact_edges = read_cell_file(rd, edge_path, Scores.load)
        x = exact_edges.per_input[:, subset]
        sizes = tuple(n for n in (5, 10, 20) if n <= len(subset))
        for c in [
            c for c in cells if c.dataset == cells[0].dataset and c.method not in MASK_METHODS
        ]:  # scored cells of the reference's inputs
            scores = read_cell_file(rd, os.path.join(rd.cell_dir(c.id), "scores.safetensors"), Scores.load)
            a = scores.per_input[_rows_of(scores.uid, exact_edges.uid, len(x))][:, subset]
            out["edge"][c.estimator] = stats.estimator_noise(a, x, n_edges=sizes).summary() | {"edges": len(subset)}
    return out


def _rows_of(uid_all: np.ndarray | None, uid_subset: np.ndarray | None, n: int) -> np.ndarray:
    """Where the reference's inputs sit in a cell's scores (by input id; the first ``n`` inputs
    in runs whose scores carry no ids, which took the reference from the first inputs)."""
    if uid_all is None or uid_subset is None:
        return np.arange(n)
    where = {int(u): i for i, u in enumerate(uid_all)}
    missing = [int(u) for u in uid_subset if int(u) not in where]
    if missing:
        raise RunDirError(f"the reference's input {missing[0]} is not among the first cell's inputs")
    return np.array([where[int(u)] for u in uid_subset])
