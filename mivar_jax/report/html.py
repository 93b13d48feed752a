"""``write_report``: the figures (PNG, in ``figures/``) and one self-contained ``report.html``: the
verdict, tables in plain labels, a reading of each section generated from its numbers
(``readings``), interactive views (``interactive``) and the PNGs embedded as data URIs."""

from __future__ import annotations

import html
import json
import os

import numpy as np

from mivar_jax._io import atomic_write_text
from mivar_jax.circuits import Circuit
from mivar_jax.graph import Graph
from mivar_jax.masks import MASK_METHODS
from mivar_jax.report import figures, interactive, page, readings
from mivar_jax.report.tables import TOPN_JACCARD, summary_row, table
from mivar_jax.scores import Scores
from mivar_jax.stats import edge_variability
from mivar_jax.study.analysis import cell_labels, load_npz, plus_minus, read_cell_file
from mivar_jax.study.rundir import RunDir, read_json

FIGURES = (
    ("score_distributions", "Single-input score distributions of the top edges"),
    ("jaccard_heatmap", "Bootstrap Jaccard matrices"),
    ("inclusion_frequency", "Edge inclusion frequencies"),
    ("faithfulness_curve", "Circuit size vs faithfulness (CPR curve) and stability"),
    ("perturbation_jaccard", "Circuits across the perturbation grid"),
    ("variance_decomposition", "Variance decomposition"),
    ("majority_circuit", "The majority circuit"),
    ("held_out", "Held-out against in-sample faithfulness"),
    ("margins", "Scoring noise against selection: margins to the cut"),
    ("prompts_needed", "How many prompts are enough"),
    ("stability_frontier", "Stability at fixed faithfulness"),
)

INTERACTIVE = {"score_distributions", "jaccard_heatmap", "majority_circuit"}  # sections with an interactive view
TOP_EDGES = 12  # edges per cell in the score distributions


def write_report(rd: RunDir, results) -> str:
    """Draw every figure into ``figures/`` and write ``report.html``; returns its path."""
    cfg = results.config
    fig_dir = rd.file("figures")
    os.makedirs(fig_dir, exist_ok=True)
    cells = [c.id for c in cfg.cells()]
    head, how = cfg.bootstrap.size, cfg.circuits.aggregations[0]
    tag = f"{how}-n{head}"
    scored = [c.id for c in cfg.cells() if c.method not in MASK_METHODS]  # learned-mask cells have no scores
    if scored:
        first = read_cell_file(rd, os.path.join(rd.cell_dir(scored[0]), "scores.safetensors"), Scores.load)
        graph = first.graph
    else:
        first, graph = None, Graph(**read_cell_file(rd, os.path.join(rd.cell_dir(cells[0]), "masks.json"))["graph"])
    labels = cell_labels(cfg)
    jaccards, freqs, margins = {}, {}, {}
    for c in cells:
        z = read_cell_file(rd, os.path.join(rd.cell_dir(c), "bootstrap.npz"), load_npz)
        jaccards[labels[c]] = z[f"{tag}/jaccard"]
        freqs[labels[c]] = z[f"{tag}/inclusion_frequency"]
        if f"{tag}/margin" in z:  # stability.margins
            margins[labels[c]] = (z[f"{tag}/margin"], z[f"{tag}/unpruned_inclusion"])
    path = lambda name: os.path.join(fig_dir, f"{name}.png")
    if first is not None:
        figures.score_distributions(
            first, path("score_distributions"), title=f"{scored[0]}: per-input scores of the top edges"
        )
    else:
        figures.placeholder(path("score_distributions"), "learned-mask cells only: no per-input scores")
    figures.jaccard_heatmaps(jaccards, path("jaccard_heatmap"), head)
    figures.inclusion_frequencies(freqs, graph.edge_names, path("inclusion_frequency"), head)
    figures.faithfulness_curve(results.rows, path("faithfulness_curve"), graph.n_edges)
    figures.perturbation_jaccard(results.perturbations, path("perturbation_jaccard"))
    figures.variance_decomposition(results.decomposition, path("variance_decomposition"))
    f0 = freqs[labels[cells[0]]]
    majority = Circuit(graph, f0 >= 0.5)
    figures.majority_circuit(majority, f0, path("majority_circuit"))
    by_label = {labels[c]: v for c, v in results.stability.items()}
    figures.held_out(results.rows, path("held_out"))
    figures.margins(margins, path("margins"), head, cfg.bootstrap.confidence)
    figures.prompts_needed(by_label, path("prompts_needed"))
    figures.stability_frontier(by_label, path("stability_frontier"))

    views = {
        "score_distributions": _score_view(rd, scored, labels, first),
        "jaccard_heatmap": interactive.jaccard_view(jaccards),
        "majority_circuit": _circuit_view(rd, cfg, graph, f0, first if scored[:1] == cells[:1] else None, labels),
    }
    out = rd.file("report.html")
    atomic_write_text(out, _html(rd, results, fig_dir, majority, views, jaccards, freqs))
    return out


def _score_view(rd: RunDir, scored: list[str], labels: dict, first: Scores | None) -> str:
    """Each scored cell's top edges by |mean score|, every input's score as a point (``first``: the
    first scored cell's scores, already read)."""
    if not scored:
        return "<p>Learned-mask cells only: no per-input scores to show.</p>"
    cells = {}
    for c in scored:
        path = os.path.join(rd.cell_dir(c), "scores.safetensors")
        scores = first if c == scored[0] else read_cell_file(rd, path, Scores.load)
        top = np.argsort(-np.abs(edge_variability(scores).mean), kind="stable")[:TOP_EDGES]
        cells[labels[c]] = ([scores.names[e] for e in top], np.asarray(scores.per_input[:, top]))
    return interactive.score_view(cells)


def _circuit_view(rd: RunDir, cfg, graph: Graph, frequency: np.ndarray, scores: Scores | None, labels: dict) -> str:
    """The first cell's edges ever in a bootstrap replicate of the headline circuit."""
    cell = cfg.cells()[0].id
    z = read_cell_file(rd, os.path.join(rd.cell_dir(cell), "circuits.npz"), load_npz)
    score = np.asarray(z["aggregated"][0], np.float64)  # [A, E]: the first aggregation
    edges = np.nonzero(frequency > 0)[0]
    per_input = None if scores is None else np.asarray(scores.per_input[:, edges])
    title = (f"{labels[cell]}: edges of the top-{cfg.bootstrap.size} bootstrap circuits; "
             "hover an edge (◆) for its scores, drag to pan, scroll to zoom")  # fmt: skip
    return interactive.circuit_view(graph, frequency, score, per_input, edges, title=title)


def _display_cell(info: dict, label: str) -> dict:
    settings = info.get("estimator_settings") or {}
    if all(isinstance(v, dict) for v in settings.values()):  # the reference: one entry per estimator
        settings = {}
    eval_inputs = info.get("eval_inputs")
    return {
        **info,
        "cell": label,
        "folder": info.get("cell"),
        "estimator settings": ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("method", "steps")),
        "eval inputs": None if eval_inputs is None else len(eval_inputs),
        "verdict": (info.get("verdict") or "").split(":")[0],  # the words are in the summary table
    }


def _interval(d: dict | None, key: str = "ci_bca") -> str:
    if not d or d.get("value") is None:
        return "–"
    lo, hi = d[key]
    return f"{d['value']:.3f} [{lo:.3f}, {hi:.3f}]"


PAST_THE_PAPER = {
    "faithfulness in sample": "faithfulness ± SE on discovery prompts: the optimism of judging a circuit where it was found",
    "prompts needed": "prompts at which the bootstrap mean Jaccard of the headline circuit reaches 0.8 (m-out-of-N bootstrap)",
    "CPR [BCa]": "MIB's circuit performance ratio (area under faithfulness vs size) with its BCa bootstrap interval",
    "CMD [BCa]": "MIB's circuit-model distance (area of |1 − faithfulness|) with its BCa bootstrap interval",
    "Jaccard implied by margins": "the Jaccard that the edges' distances to the cut (in standard errors) imply",
    "contested share": "share of the replicates' disagreement carried by edges within the band around the cut",
}  # fmt: skip


def _past_the_paper(results) -> str:
    """Per cell: held-out against in-sample faithfulness, the prompts needed, CPR / CMD with their
    intervals, stability at fixed faithfulness and the margins to the cut; then each reading."""
    labels = cell_labels(results.config)
    head = {r["cell"]: r for r in results.headline_rows()}
    rows, notes_by_cell, extra = [], [], dict(PAST_THE_PAPER)
    for c in results.config.cells():
        r, st = head.get(c.id, {}), results.stability.get(c.id, {})
        pn, curve = st.get("prompts_needed"), st.get("curve")
        targets = st.get("faithfulness", {}).get("targets", [])
        judged = f"faithfulness ({r.get('eval_set') or '–'})"
        extra[judged] = "faithfulness ± SE of the headline circuit on the prompts it is judged on"
        row = {
            "cell": labels[c.id],
            judged: plus_minus(r.get("faithfulness"), r.get("faithfulness_se")),
            "faithfulness in sample": plus_minus(r.get("faithfulness_in_sample"), r.get("faithfulness_in_sample_se")),
            "prompts needed": "–"
            if not pn
            else ("> " + str(pn["sizes"][-1]) if pn["n_needed"] is None else f"{pn['n_needed']:.0f}"),
            "CPR [BCa]": _interval((curve or {}).get("intervals", {}).get("cpr")),
            "CMD [BCa]": _interval((curve or {}).get("intervals", {}).get("cmd")),
            "Jaccard implied by margins": r.get("implied_jaccard"),
            "contested share": r.get("contested_share"),
        }
        for t in targets:
            row[f"edges at f ≥ {t['target']}"] = t["size_median"]
            row[f"Jaccard at f ≥ {t['target']}"] = t["mean_jaccard"]
            extra[f"edges at f ≥ {t['target']}"] = (
                f"median size of the smallest circuits reaching faithfulness {t['target']}"
            )
            extra[f"Jaccard at f ≥ {t['target']}"] = "mean pairwise Jaccard of those circuits across replicates"
        rows.append(row)
        notes = [x["reading"] for x in ([pn] if pn else []) + targets]
        if notes:
            notes_by_cell.append(
                f"<li><b>{html.escape(labels[c.id])}</b>: " + "; ".join(map(html.escape, notes)) + "</li>"
            )
    if not rows:
        return ""
    return (
        "<p>Circuits are found on the study's prompts and judged on prompts held out of discovery "
        "(in-sample numbers beside them show the optimism). Prompts needed: where the bootstrap mean "
        "Jaccard of the headline circuit reaches 0.8 as the prompts grow (m-out-of-N bootstrap; "
        "docs/statistics.md). CPR / CMD: MIB's areas with bootstrap intervals over the held-out "
        "prompts. Margins: the Jaccard the edges' distances to the cut imply, and the share of the "
        "replicates' disagreement carried by edges within the 95% band of the cut.</p>"
        + table(rows, extra=extra)
        + (f"<ul>{''.join(notes_by_cell)}</ul>" if notes_by_cell else "")
    )


def _margin_readings(results) -> str:
    """Each cell's reading of its headline circuit's margins (``stats.SelectionNoise.reading``)."""
    labels = cell_labels(results.config)
    items = []
    band = f"{results.config.bootstrap.confidence:.0%}"
    share = lambda v, d=0: "–" if v is None else f"{v:.{d}%}"  # None: NaN in the run's JSON
    for r in results.headline_rows():
        if r.get("implied_jaccard") is None:
            continue
        carry = (
            "no edge changes side between replicates"
            if r["contested_share"] is None
            else f"they carry {share(r['contested_share'])} of the replicates' disagreement"
        )
        items.append(
            f"<li><b>{html.escape(labels[r['cell']])}</b>: {r['contested_edges']} edges within the {band} band of the "
            f"cut ({carry}); the scores themselves vary by {share(r['relative_se'], 1)}; the margins imply a "
            f"Jaccard of {r['implied_jaccard']:.3f} against {r['unpruned_jaccard']:.3f} observed (unpruned "
            f"top-{r['size']})</li>"
        )
    if not items:
        return ""
    return (
        "<p>An edge's margin is its distance to the top-n cut in bootstrap standard errors. Where the "
        "disagreement between replicates sits on edges within the band, the circuit is unstable because "
        "many edges score alike near the cut, not because the scores are noisy everywhere; where the "
        "implied and observed Jaccards agree, that noise explains the instability.</p>"
        f"<ul>{''.join(items)}</ul>"
    )


def _section_readings(results, jaccards: dict, freqs: dict) -> dict[str, str]:
    """Each figure section's reading (``readings``), by the figure's name."""
    cfg, rows = results.config, results.headline_rows()
    labels = cell_labels(cfg)
    by_label = {labels[c]: v for c, v in results.stability.items()}
    return {
        "score_distributions": readings.scores(rows),
        "jaccard_heatmap": readings.jaccard(jaccards),
        "inclusion_frequency": readings.inclusion(freqs, cfg.bootstrap.size),
        "faithfulness_curve": readings.curve(results.rows),
        "perturbation_jaccard": readings.perturbations(results.perturbations),
        "variance_decomposition": readings.decomposition(results.decomposition),
        "held_out": readings.held_out(rows),
        "prompts_needed": readings.prompts_needed(by_label),
        "stability_frontier": readings.frontier(by_label),
    }


def _html(rd: RunDir, results, fig_dir: str, majority: Circuit, views: dict, jaccards: dict, freqs: dict) -> str:
    cfg = results.config
    verdict = results.verdict
    kind = verdict.split(":")[0]
    labels = cell_labels(cfg)
    summary = [summary_row(r) for r in results.headline_rows()]
    by_id = {c.id: labels[c.id] for c in cfg.cells()}
    cells = [_display_cell(c, by_id.get(c.get("cell"), c.get("cell"))) for c in results.cells]
    cell_cols = ["cell", "folder", "estimator settings", "n_inputs", "eval inputs", "clean_metric_mean",
                 "estimator_seconds", "seconds", "compile_seconds", "verdict"]  # fmt: skip
    parts = [
        page.head(f"mivar report: {cfg.name}"),
        f"<h1>Study <code>{html.escape(cfg.name)}</code>: {html.escape(cfg.model.source)} on "
        f"{html.escape(cfg.data.task)}</h1>",
        f"<p class='verdict {kind}'><b>Verdict.</b> {html.escape(verdict)}</p>",
        f"<h2>Summary at the headline size (top-{cfg.bootstrap.size}, {html.escape(cfg.circuits.aggregations[0])})</h2>",
        page.reading(readings.summary(results.headline_rows(), cfg.bootstrap.replicates)),
        table(summary, [c for c in summary[0] if c not in ("size", "eval_inputs")] if summary else [], glossary="open"),
        "<h2>Cells</h2>",
        page.reading(readings.cells(results.cells)),
        table(cells, cell_cols),
    ]
    section_readings = _section_readings(results, jaccards, freqs)
    for name, caption in FIGURES:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        parts.append(page.reading(section_readings.get(name, "")))
        if name == "majority_circuit":
            parts.append(f"<p>{majority.n_edges} edges, {majority.n_nodes} nodes (first cell, top-{cfg.bootstrap.size}, "
                         "edges in ≥ 50% of the bootstrap replicates; darker = more frequent). The interactive view "
                         "draws every edge any replicate held; the slider filters them by inclusion frequency.</p>")  # fmt: skip
        if name == "perturbation_jaccard" and results.perturbations["mean_by_factor"]:
            rows = [{"factor": k, "mean_jaccard": v} for k, v in results.perturbations["mean_by_factor"].items()]
            parts.append(table(rows, ["factor", "mean_jaccard"]))
        if name == "held_out":
            parts.append(_past_the_paper(results))
        if name == "margins":
            parts.append(_margin_readings(results))
        if name == "variance_decomposition":
            for key, dec in results.decomposition.items():
                if "table" in dec:
                    columns = ["effect", "df", "ss", "ms", "component", "share", "ss_share"]
                    title = readings.decomposition_name(key)
                    parts += [f"<h3>{html.escape(title)}</h3>", table(dec["table"], columns)]
                else:
                    title = readings.decomposition_name(key)
                    parts.append(f"<p>{html.escape(title)}: {html.escape(dec.get('skipped', ''))}</p>")
        if name in views:
            parts.append(views[name])
            parts.append(page.static(fig_dir, name, caption))
        else:
            parts.append(page.figure(fig_dir, name, caption))
    if results.estimator_noise:
        parts.append("<h2>Estimator noise against exact scores</h2>")
        parts.append(page.reading(readings.estimator_noise(results.estimator_noise)))
        for level, by_est in results.estimator_noise.items():
            rows, extra = [], {}
            for k, s in by_est.items():
                row = {"estimator": k, **{m: v for m, v in s.items() if not isinstance(v, dict)}}
                for n, j in s.get("topn_jaccard", {}).items():
                    row[TOPN_JACCARD.format(n=n)] = j
                    extra[TOPN_JACCARD.format(n=n)] = f"Jaccard of the top-{n} items by the estimator and by exact"
                rows.append(row)
            if rows:
                parts += [f"<h3>{level} level</h3>", table(rows, extra=extra)]
    parts += [
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(cfg.to_toml())}</pre>",
        "<h2>Environment</h2>",
        f"<pre>{html.escape(json.dumps(read_json(rd.file('environment.json')), indent=1))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
