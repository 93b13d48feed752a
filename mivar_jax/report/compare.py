"""``write_comparison``: studies side by side in one self-contained ``compare.html`` (two models,
two estimators, two dates): each run's headline table, the stability and faithfulness curves
overlaid, and the Jaccard between the runs' circuits (where they share an edge set)."""

from __future__ import annotations

import html
import itertools
import os

import numpy as np

from mivar_jax import stats
from mivar_jax._io import atomic_write_text
from mivar_jax.report import figures, interactive, page, readings
from mivar_jax.report.tables import summary_row, table
from mivar_jax.study.analysis import cell_labels, load_npz, read_cell_file
from mivar_jax.study.paper import is_paper_run, task_dirs
from mivar_jax.study.rundir import RunDir, RunDirError, read_json


class _Run:
    """What a comparison reads of one finished run: its config, summary rows and circuits."""

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        self.rd = rd = RunDir.open(path)
        if not os.path.exists(rd.file("results", "summary.json")):
            raise RunDirError(f"{path} has no results/: finish it (mivar run --resume {path}) or rebuild them "
                              f"(mivar report {path})")  # fmt: skip
        self.config = cfg = rd.config
        self.rows = read_json(rd.file("results", "summary.json"))
        self.verdict = read_json(rd.file("results", "study.json")).get("verdict", "")
        self.name = f"{cfg.name} ({os.path.basename(os.path.normpath(path))})"
        self.labels = cell_labels(cfg)
        head = (cfg.circuits.aggregations[0], cfg.bootstrap.size)
        self.head = [r for r in self.rows if (r["aggregation"], r["size"]) == head]

    def circuits(self) -> dict[str, np.ndarray]:
        """Each cell's full-data headline circuit ([E] bool), by cell id."""
        cfg, out = self.config, {}
        s = cfg.circuits.sizes.index(cfg.bootstrap.size)
        for c in cfg.cells():
            z = read_cell_file(self.rd, os.path.join(self.rd.cell_dir(c.id), "circuits.npz"), load_npz)
            full = np.unpackbits(z["full_packed"], axis=-1, count=int(z["n_edges"])).astype(bool)
            out[c.id] = full[0, s]
        return out


def write_comparison(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> str:
    """Write ``out/compare.html`` (and its PNG in ``out/figures/``) setting the runs side by side
    (a run of the paper preset: each of its tasks' runs); returns the page's path."""
    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two run directories")
    # a run of the paper preset stands for its tasks' runs
    runs = [_Run(t) for p in run_dirs for t in (task_dirs(p) if is_paper_run(p) else [p])]
    if len({r.name for r in runs}) < len(runs):
        for i, r in enumerate(runs):
            r.name = f"{i + 1}: {r.name}"
    out = os.fspath(out)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)

    head_rows = [{"run": r.name, **summary_row(row)} for r in runs for row in r.head]
    curve_rows, series, style = [], {}, {}
    cell_names: dict[str, int] = {}  # the same cell label gets the same colour in every run; runs differ by dash
    for k, r in enumerate(runs):
        agg = r.config.circuits.aggregations[0]
        for row in r.rows:
            if row["aggregation"] == agg:
                curve_rows.append({**row, "cell": f"{r.name}/{row['cell']}", "label": f"{r.name}: {row['label']}"})
        for cell in dict.fromkeys(row["cell"] for row in r.rows):
            rs = sorted((x for x in r.rows if x["cell"] == cell and x["aggregation"] == agg), key=lambda x: x["size"])
            name = f"{r.name}: {r.labels[cell]}"
            series[name] = [(x["size"], x["faithfulness"], x["mean_jaccard"]) for x in rs]
            style[name] = (cell_names.setdefault(r.labels[cell], len(cell_names)), k)
    figures.faithfulness_curve(curve_rows, os.path.join(out, "figures", "faithfulness_curve.png"), _edge_count(runs))

    overlap, notes = _overlaps(runs)
    parts = [
        page.head("mivar compare: " + " vs ".join(r.config.name for r in runs)),
        f"<h1>Comparing {len(runs)} runs</h1>",
        table(
            [_run_row(r) for r in runs],
            ["run", "model", "task", "cells", "replicates", "created", "verdict"],
            extra=RUN_COLUMNS,
        ),  # fmt: skip
        page.reading(_reading_of(runs, overlap)),
        "<h2>Headline circuits side by side</h2>",
        table(head_rows, list(HEADLINE), glossary="open"),
        "<h2>Faithfulness and stability against circuit size, overlaid</h2>",
        interactive.curves_view(series, style),
        page.static(os.path.join(out, "figures"), "faithfulness_curve", "Circuit size vs faithfulness and stability"),
        "<h2>Jaccard between the runs' circuits</h2>",
        "<p>Full-data headline circuits (top-n of all the discovery prompts, pruned) of runs on the same task: "
        "the first cell of each run against the first cell of the other, and cell against cell where both runs "
        "have a cell of the same levels. Circuits of different models are not comparable edge by edge.</p>",
        table(overlap, ["run A", "run B", "cells", "jaccard", "edges A", "edges B"], extra=OVERLAP_COLUMNS),
        "".join(f"<p>{html.escape(n)}</p>" for n in notes),
        "</body></html>",
    ]
    path = os.path.join(out, "compare.html")
    atomic_write_text(path, "\n".join(parts))
    return path


HEADLINE = ("run", "cell", "size", "n_edges_mean", "mean_jaccard_mc", "jaccard_cv", "mean_jaccard_to_full", "stable",
            "snr_median", "faithfulness", "circuit_error_task")  # fmt: skip
RUN_COLUMNS = {
    "model": "the model source of the run",
    "task": "the task of the run",
    "cells": "cells in the run's grid",
    "replicates": "bootstrap replicates B",
    "created": "when the run was started (UTC, to the minute)",
}
OVERLAP_COLUMNS = {
    "run A": "the first run of the pair",
    "run B": "the second run of the pair",
    "cells": "the cells compared (A's cell vs B's cell)",
    "jaccard": "Jaccard of the two full-data headline circuits (1 = the same edges)",
    "edges A": "edges of run A's circuit after pruning",
    "edges B": "edges of run B's circuit after pruning",
}


def _run_row(r: _Run) -> dict:
    manifest = read_json(r.rd.file("manifest.json"))
    return {
        "run": r.name,
        "model": r.config.model.source,
        "task": r.config.data.task,
        "cells": len(r.config.cells()),
        "replicates": r.config.bootstrap.replicates,
        "created": (manifest.get("created") or "")[:16].replace("T", " "),
        "verdict": r.verdict,
    }


def _edge_count(runs: list[_Run]) -> int:
    counts = {int(read_cell_file(r.rd, os.path.join(r.rd.cell_dir(r.config.cells()[0].id), "circuits.npz"),
                                 load_npz)["n_edges"]) for r in runs}  # fmt: skip
    return counts.pop() if len(counts) == 1 else 0


def _overlaps(runs: list[_Run]) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    circuits = [r.circuits() for r in runs]
    for (a, ca), (b, cb) in itertools.combinations(zip(runs, circuits, strict=True), 2):
        first_a, first_b = next(iter(ca)), next(iter(cb))
        if a.config.data.task != b.config.data.task:
            continue  # circuits of two tasks: nothing to compare
        if ca[first_a].shape != cb[first_b].shape or a.config.model.source != b.config.model.source:
            notes.append(f"{a.name} and {b.name}: different models ({a.config.model.source}, "
                         f"{b.config.model.source}): their circuits are not compared edge by edge.")  # fmt: skip
            continue
        pairs = [(first_a, first_b)] + [
            (x, y) for x in ca for y in cb
            if (x, y) != (first_a, first_b) and _levels(a, x) == _levels(b, y)
        ]  # fmt: skip
        for x, y in pairs:
            j = float(np.asarray(stats.jaccard_matrix(np.stack([ca[x], cb[y]])))[0, 1])
            rows.append({"run A": a.name, "run B": b.name, "cells": f"{a.labels[x]} vs {b.labels[y]}", "jaccard": j,
                         "edges A": int(ca[x].sum()), "edges B": int(cb[y].sum()),
                         "first": (x, y) == (first_a, first_b)})  # fmt: skip
    return rows, notes


def _levels(run: _Run, cell: str) -> dict:
    return next(c.levels for c in run.config.cells() if c.id == cell)


def _reading_of(runs: list[_Run], overlap: list[dict]) -> str:
    parts = []
    for r in runs:
        n_stable = sum(bool(x["stable"]) for x in r.head)
        j = [x["mean_jaccard"] for x in r.head if x["mean_jaccard"] is not None]
        f = [x["faithfulness"] for x in r.head if x.get("faithfulness") is not None]
        text = f"{r.name}: stable in {n_stable} of {len(r.head)} cells (mean Jaccard {min(j):.3f}–{max(j):.3f})"
        if f:
            text += f", faithfulness {min(f):.3f}–{max(f):.3f} ({readings.faithfulness_word(min(f))} at worst)"
        parts.append(text)
    text = "; ".join(parts) + "."
    firsts = [r for r in overlap if r["first"]]
    for r in firsts[:3]:
        same = (
            "the same circuit"
            if r["jaccard"] >= 0.999
            else "mostly the same edges"
            if r["jaccard"] >= 0.8
            else "partly the same edges"
        )
        text += f" The first cells of {r['run A']} and {r['run B']} overlap with Jaccard {r['jaccard']:.3f} ({same})."
    if len(firsts) > 3:
        text += f" {len(firsts) - 3} more pairs in the table below."
    return text
