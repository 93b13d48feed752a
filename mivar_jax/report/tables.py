"""The report's tables: human column labels with units, a one-line glossary per column, numbers
formatted to their precision, and a box that scrolls inside the page (never the page itself).

``COLUMNS`` maps a field (as the run's JSON names it) to ``(label, digits, definition)``: digits
is the number of decimals a float gets (None: three significant decimals, tiny values in
scientific notation). A column missing from ``COLUMNS`` is shown under its own name."""

from __future__ import annotations

import html
import math
import re

from mivar_jax.study.analysis import plus_minus

_J = "Jaccard = |A ∩ B| / |A ∪ B| of two circuits' edge sets (1 = identical)"
COLUMNS: dict[str, tuple[str, int | None, str]] = {
    # the summary at the headline size
    "cell": ("cell", None, "the grid cell: the levels of the factors that vary (base = the first cell)"),
    "folder": ("folder", None, "the cell's folder under cells/ of the run directory"),
    "run": ("run", None, "the run directory (its study name and folder)"),
    "size": ("size n", None, "circuit size before pruning: the top-n edges by aggregated score"),
    "n_edges_mean": ("edges kept (mean)", 1, "edges left after pruning edges off any input→logits path, mean over replicates"),
    "mean_jaccard_mc": ("mean Jaccard [MC interval]", None, "mean pairwise Jaccard of the B bootstrap replicates' circuits, with its Monte-Carlo interval over the B replicates (it shrinks as B grows; it is not a data-uncertainty interval). " + _J),
    "mean_jaccard": ("mean Jaccard", None, "mean pairwise Jaccard of the bootstrap replicates' circuits. " + _J),
    "jaccard_cv": ("Jaccard CV", None, "coefficient of variation (std / mean) of the pairwise Jaccards"),
    "n_empty": ("empty replicates", 0, "replicate circuits left empty after pruning (empty circuits count as identical)"),
    "replicates_with_cut_ties": ("replicates with ties at the cut", 0, "replicates in which edges tied with the n-th were left out at the top-n cut (ties go to the lower edge index)"),
    "mean_jaccard_to_full": ("Jaccard to full-data circuit", None, "mean Jaccard of each replicate's circuit to the circuit found on all the prompts"),
    "stable": ("stable (≥ 0.8)", None, "the paper's bar: mean Jaccard ≥ 0.8 with B ≥ 100 replicates"),
    "snr_median": ("median SNR", 2, "median over the full-data circuit's edges of |mean| / std of the single-input scores (per-edge values in each cell's edges.csv; CVs are never averaged: they explode as a mean nears 0)"),
    "eval_inputs": ("evaluation prompts", 0, "prompts the circuit is judged on (a random subset drawn with the study's seed; circuits.eval_inputs)"),
    "faithfulness": ("faithfulness ± SE", None, "(m(circuit) − m(empty)) / (m(model) − m(empty)) of the logit difference m: 1 = the circuit recovers the whole model's effect, 0 = no more than the empty circuit; ± one standard error over the evaluation prompts"),
    "circuit_error_task": ("circuit error (task) ± SE", None, "share of prompts on which the circuit and the model disagree on the answer between the two task tokens"),
    "circuit_error_vocab": ("circuit error (vocab) ± SE", None, "share of prompts on which the circuit's top token over the vocabulary differs from the model's"),
    "kl": ("KL (nats)", None, "KL(model ‖ circuit) of the next-token distributions at the answer position, mean over prompts"),
    # cells
    "estimator settings": ("estimator settings", None, "the estimator's settings other than its name and steps"),
    "n_inputs": ("discovery prompts", 0, "prompts the edges are scored on"),
    "eval inputs": ("evaluation prompts", 0, "prompts the circuit is judged on"),
    "clean_metric_mean": ("clean metric (mean)", None, "the model's metric (logit difference) on the clean prompts, mean"),
    "estimator_seconds": ("scoring time (s)", 1, "wall time of the estimator (seconds)"),
    "seconds": ("cell time (s)", 1, "wall time of the whole cell (seconds, compilation included)"),
    "compile_seconds": ("compile time (s)", 1, "of the cell time, seconds spent compiling kernels"),
    "verdict": ("verdict", None, "the cell's bootstrap verdict at the headline size"),
    # variance decomposition
    "effect": ("effect", None, "a factor, an interaction of factors, or the residual"),
    "df": ("df", 0, "degrees of freedom"),
    "ss": ("sum of squares", None, "the effect's sum of squares"),
    "ms": ("mean square", None, "sum of squares / df"),
    "component": ("variance component", None, "the effect's variance component (method of moments; negative estimates set to 0)"),
    "share": ("share of variance", None, "the component as a share of the total variance"),
    "ss_share": ("share of sum of squares", None, "the effect's sum of squares as a share of the total"),
    # estimator noise
    "estimator": ("estimator", None, "the fast estimator compared with exact patching on the same prompts"),
    "mean_abs_bias": ("mean |bias|", None, "mean over items of |mean(estimate − exact)| (metric units)"),
    "mean_rmse": ("mean RMSE", None, "mean over items of the root-mean-square error against exact (metric units)"),
    "intrinsic_variance": ("intrinsic variance", None, "sum over items of the exact scores' variance across prompts"),
    "noise_variance": ("estimator noise variance", None, "sum over items of the variance of (estimate − exact) across prompts"),
    "covariance": ("covariance", None, "sum over items of the covariance of exact scores and estimator noise"),
    "spearman_median": ("median Spearman", None, "median over prompts of the rank correlation of the estimator's and the exact scores"),
    "kendall_median": ("median Kendall τ", None, "median over prompts of Kendall's rank correlation"),
    "edges": ("edges compared", 0, "edges in the comparison (the estimators' top edges and a random sample)"),
    "factor": ("factor", None, "a factor of the perturbation grid"),
}  # fmt: skip
TOPN_JACCARD = "top-{n} Jaccard"  # estimator noise: Jaccard of the top-n items by the estimator and by exact


def label(column: str) -> str:
    return COLUMNS[column][0] if column in COLUMNS else column


def fmt(value, digits: int | None = None) -> str:
    """A value as a table shows it: "–" for missing or NaN, yes/no, integers with thousands
    separators, floats with ``digits`` decimals (default 3; |x| < 1e-3 in scientific notation)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:,.{digits}f}"
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def interval(value, low, high, digits: int = 3) -> str:
    """``0.815 [0.803, 0.826]``; the value alone when the interval is undefined; "–" without it."""
    if value is None or not math.isfinite(value):
        return "–"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _cell(value, digits: int | None) -> str:
    """A number (or a formatted number: an interval, a value ± its error) stays on one line, right
    aligned; text wraps, left aligned."""
    text = fmt(value, digits)
    numeric = not isinstance(value, str) or (len(text) <= 28 and _NUMBER.match(text) is not None)
    if numeric:
        return f"<td class='num'>{html.escape(text)}</td>"
    return f"<td class='text'>{html.escape(text)}</td>"


_NUMBER = re.compile(r"^[-–+>≥≤<]?\s?[\d.,]")


def table(
    rows: list[dict], columns: list[str] | None = None, glossary: str = "closed", extra: dict | None = None
) -> str:
    """An HTML table in a box that scrolls sideways inside the page; its headers carry their
    definitions (hover) and a one-line glossary of its columns follows (``glossary``: "open",
    "closed" — folded under "What the columns mean" — or "none"). ``extra`` defines columns the
    table adds (``{column: definition}``)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    extra = extra or {}
    define = lambda c: COLUMNS[c][2] if c in COLUMNS else extra.get(c, "")
    digits = lambda c: COLUMNS[c][1] if c in COLUMNS else None
    grid = [[_cell(r.get(c), digits(c)) for c in columns] for r in rows]
    text = [bool(rows) and all(row[i].startswith("<td class='text'") for row in grid) for i in range(len(columns))]
    head = "".join(
        f'<th{" class=text" if t else ""} title="{html.escape(define(c))}">{html.escape(label(c))}</th>'
        for c, t in zip(columns, text, strict=True)
    )
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in grid)
    out = f"<div class='table-box'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    if glossary != "none" and (defined := [c for c in columns if define(c)]):
        items = "".join(f"<dt>{html.escape(label(c))}</dt><dd>{html.escape(define(c))}</dd>" for c in defined)
        is_open = " open" if glossary == "open" else ""
        out += f"<details class='glossary'{is_open}><summary>What the columns mean</summary><dl>{items}</dl></details>"
    return out


def summary_row(r: dict) -> dict:
    """A summary row as the report shows it: the Monte-Carlo interval and ± standard errors folded in."""
    return {
        "cell": r["label"],
        **{k: r.get(k) for k in ("size", "n_edges_mean")},
        "mean_jaccard_mc": interval(r["mean_jaccard"], r["jaccard_mc_low"], r["jaccard_mc_high"]),
        **{
            k: r.get(k)
            for k in (
                "jaccard_cv",
                "mean_jaccard_to_full",
                "stable",
                "n_empty",
                "replicates_with_cut_ties",
                "snr_median",
                "eval_inputs",
            )
        },  # fmt: skip
        **{
            k: plus_minus(r[k], r.get(f"{k}_se")) for k in ("faithfulness", "circuit_error_task", "circuit_error_vocab")
        },
        "kl": r["kl"],
    }
