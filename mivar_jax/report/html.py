"""``write_report``: the figures (PNG, in ``figures/``) and one self-contained ``report.html``
(figures embedded as data URIs, each also named by its file) from a run directory."""

from __future__ import annotations

import base64
import html
import json
import os

from mivar_jax._io import atomic_write_text
from mivar_jax.circuits import Circuit
from mivar_jax.graph import Graph
from mivar_jax.masks import MASK_METHODS
from mivar_jax.report import figures
from mivar_jax.scores import Scores
from mivar_jax.study.analysis import JACCARD_INTERVAL, cell_labels, load_npz, plus_minus, read_cell_file
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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.verdict{font-size:1.05em;padding:.7em 1em;border-radius:6px;background:#f6f6f6;border-left:5px solid #888}
.stable{border-color:#2a9d4b}.unstable{border-color:#c0392b}.mixed{border-color:#e0a020}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow-x:auto}
.glossary{font-size:.82em;color:#444}.glossary dd{margin:0 0 .3em 1.5em}
"""


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

    out = rd.file("report.html")
    atomic_write_text(out, _html(rd, results, fig_dir, majority))
    return out


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(fig_dir: str, name: str, caption: str) -> str:
    with open(os.path.join(fig_dir, f"{name}.png"), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return (
        f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" '
        f'data-file="figures/{name}.png"><figcaption>{html.escape(caption)} (<code>figures/{name}.png</code>)'
        "</figcaption></figure>"
    )


def _display_row(r: dict) -> dict:
    """A summary row as the report shows it: interval and ± standard errors folded in."""
    lo, hi = r["jaccard_mc_low"], r["jaccard_mc_high"]
    mc = "–" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"  # undefined (NaN) with few replicates
    return {
        "cell": r["label"],
        "size": r["size"],
        "edges (mean)": r["n_edges_mean"],
        "mean Jaccard": r["mean_jaccard"],
        "MC interval (B replicates)": mc,
        "Jaccard CV": r["jaccard_cv"],
        "empty replicates": r.get("n_empty"),
        "replicates with cut ties": r.get("replicates_with_cut_ties"),
        "Jaccard to full": r["mean_jaccard_to_full"],
        "stable": r["stable"],
        "median SNR": r.get("snr_median"),
        "eval inputs": r.get("eval_inputs"),
        "faithfulness": plus_minus(r["faithfulness"], r.get("faithfulness_se")),
        "circuit error (task)": plus_minus(r["circuit_error_task"], r.get("circuit_error_task_se")),
        "circuit error (vocab)": plus_minus(r["circuit_error_vocab"], r.get("circuit_error_vocab_se")),
        "KL": r["kl"],
    }


def _display_cell(info: dict) -> dict:
    settings = info.get("estimator_settings") or {}
    if all(isinstance(v, dict) for v in settings.values()):  # the reference: one entry per estimator
        settings = {}
    eval_inputs = info.get("eval_inputs")
    return {
        **info,
        "estimator settings": ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("method", "steps")),
        "eval inputs": None if eval_inputs is None else len(eval_inputs),
    }


def _glossary(cfg) -> str:
    items = [
        ("MC interval", f"{JACCARD_INTERVAL} (B = {cfg.bootstrap.replicates}, {cfg.bootstrap.confidence:.0%}): how "
         "precisely the replicates pin down the bootstrap's mean pairwise Jaccard. It shrinks as B grows and says "
         "nothing about the uncertainty due to the data."),
        ("empty replicates", "replicate circuits left empty after pruning (empty circuits count as identical)."),
        ("replicates with cut ties", "replicates in which edges tied with the n-th were left out at the top-n cut "
         "(ties are broken toward the lower edge index)."),
        ("median SNR", "median over the full-data circuit's edges of the signal-to-noise ratio |mean| / std of the "
         "single-input scores (per-edge CV = std / |mean| and SNR are in each cell's edges.csv; CVs are never "
         "averaged: they explode as a mean nears 0)."),
        ("±", "standard error over the evaluation inputs (a random subset of each dataset, drawn with the study's "
         "seed; circuits.eval_inputs)."),
    ]  # fmt: skip
    body = "".join(f"<dt><b>{html.escape(k)}</b></dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return f"<dl class='glossary'>{body}</dl>"


def _interval(d: dict | None, key: str = "ci_bca") -> str:
    if not d or d.get("value") is None:
        return "–"
    lo, hi = d[key]
    return f"{d['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _past_the_paper(results) -> str:
    """Per cell: held-out against in-sample faithfulness, the prompts needed, CPR / CMD with their
    intervals, stability at fixed faithfulness and the margins to the cut; then each reading."""
    labels = cell_labels(results.config)
    head = {r["cell"]: r for r in results.headline_rows()}
    rows, readings = [], []
    for c in results.config.cells():
        r, st = head.get(c.id, {}), results.stability.get(c.id, {})
        pn, curve = st.get("prompts_needed"), st.get("curve")
        targets = st.get("faithfulness", {}).get("targets", [])
        row = {
            "cell": labels[c.id],
            f"faithfulness ({r.get('eval_set') or '–'})": plus_minus(r.get("faithfulness"), r.get("faithfulness_se")),
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
        rows.append(row)
        notes = [x["reading"] for x in ([pn] if pn else []) + targets]
        if notes:
            readings.append(f"<li><b>{html.escape(labels[c.id])}</b>: " + "; ".join(map(html.escape, notes)) + "</li>")
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return (
        "<p>Circuits are found on the study's prompts and judged on prompts held out of discovery "
        "(in-sample numbers beside them show the optimism). Prompts needed: where the bootstrap mean "
        "Jaccard of the headline circuit reaches 0.8 as the prompts grow (m-out-of-N bootstrap; "
        "docs/statistics.md). CPR / CMD: MIB's areas with bootstrap intervals over the held-out "
        "prompts. Margins: the Jaccard the edges' distances to the cut imply, and the share of the "
        "replicates' disagreement carried by edges within the 95% band of the cut.</p>"
        + _table(rows, columns)
        + (f"<ul>{''.join(readings)}</ul>" if readings else "")
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


def _html(rd: RunDir, results, fig_dir: str, majority: Circuit) -> str:
    cfg = results.config
    verdict = results.verdict
    kind = verdict.split(":")[0]
    summary = [_display_row(r) for r in results.headline_rows()]
    summary_cols = list(summary[0]) if summary else []
    cells = [_display_cell(c) for c in results.cells]
    cell_cols = ["cell", "estimator settings", "n_inputs", "eval inputs", "clean_metric_mean", "estimator_seconds",
                 "seconds", "compile_seconds", "verdict"]  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>mivar report: {html.escape(cfg.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Study <code>{html.escape(cfg.name)}</code>: {html.escape(cfg.model.source)} on "
        f"{html.escape(cfg.data.task)}</h1>",
        f"<p class='verdict {kind}'><b>Verdict.</b> {html.escape(verdict)}</p>",
        "<h2>Summary at the headline size</h2>",
        _table(summary, summary_cols),
        _glossary(cfg),
        "<h2>Cells</h2>",
        _table(cells, cell_cols),
    ]
    for name, caption in FIGURES:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if name == "majority_circuit":
            parts.append(f"<p>{majority.n_edges} edges, {majority.n_nodes} nodes (first cell, top-{cfg.bootstrap.size}, "
                         "edges in ≥ 50% of the bootstrap replicates; darker = more frequent).</p>")  # fmt: skip
        if name == "perturbation_jaccard" and results.perturbations["mean_by_factor"]:
            rows = [{"factor": k, "mean Jaccard": v} for k, v in results.perturbations["mean_by_factor"].items()]
            parts.append(_table(rows, ["factor", "mean Jaccard"]))
        if name == "held_out":
            parts.append(_past_the_paper(results))
        if name == "margins":
            parts.append(_margin_readings(results))
        if name == "variance_decomposition":
            for key, dec in results.decomposition.items():
                if "table" in dec:
                    columns = ["effect", "df", "ss", "ms", "component", "share", "ss_share"]
                    parts += [f"<h3>{html.escape(key)}</h3>", _table(dec["table"], columns)]
                else:
                    parts.append(f"<p>{html.escape(key)}: {html.escape(dec.get('skipped', ''))}</p>")
        parts.append(_figure(fig_dir, name, caption))
    if results.estimator_noise:
        parts.append("<h2>Estimator noise against exact scores</h2>")
        for level, by_est in results.estimator_noise.items():
            rows = [{"estimator": k, **{m: v for m, v in s.items() if not isinstance(v, dict)},
                     **{f"top{n} Jaccard": j for n, j in s.get("topn_jaccard", {}).items()}} for k, s in by_est.items()]  # fmt: skip
            if rows:
                parts += [f"<h3>{level} level</h3>", _table(rows, list(dict.fromkeys(k for r in rows for k in r)))]
    parts += [
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(cfg.to_toml())}</pre>",
        "<h2>Environment</h2>",
        f"<pre>{html.escape(json.dumps(read_json(rd.file('environment.json')), indent=1))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
