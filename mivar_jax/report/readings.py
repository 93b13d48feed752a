"""What the numbers say: one short paragraph per report section, generated from a run's results.

Each function takes the plain values a run writes (summary rows, Jaccard matrices, inclusion
frequencies, the results JSON) and returns plain text. Words are tied to fixed bars, stated
where used: a circuit is *stable* at mean Jaccard ≥ 0.8 with B ≥ 100 replicates (the paper's
bar); faithfulness is *high* at ≥ 0.8, *moderate* at 0.5–0.8 and *low* below 0.5 (the circuit
recovers less than half of the model's logit difference over the empty circuit)."""

from __future__ import annotations

import math

import numpy as np

STABLE = 0.8  # the paper's bar on the bootstrap mean pairwise Jaccard
MIN_REPLICATES = 100  # ... with at least this many replicates
HIGH, LOW = 0.8, 0.5  # faithfulness words


def _ok(x) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def _names(items: list[str], most: int = 3) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def faithfulness_word(f: float) -> str:
    return "high" if f >= HIGH else "moderate" if f >= LOW else "low"


def summary(rows: list[dict], replicates: int) -> str:
    """The headline: how many cells are stable, which are not, how faithful the circuits are,
    and what to do next. ``rows``: the summary rows at the headline size (one per cell)."""
    if not rows:
        return "No cell has finished."
    size, n = rows[0]["size"], len(rows)
    stable = [r for r in rows if r["stable"]]
    unstable = [r["label"] for r in rows if not r["stable"]]
    j = [r["mean_jaccard"] for r in rows if _ok(r["mean_jaccard"])]
    parts = []
    if n == 1:
        word = "stable" if stable else "not stable"
        parts.append(
            f"The top-{size} circuit is {word} under bootstrap (mean Jaccard {j[0]:.3f}; the bar is {STABLE})."
        )
    elif not unstable:
        parts.append(
            f"The top-{size} circuit is stable under bootstrap in all {n} cells (mean Jaccard {min(j):.3f}–{max(j):.3f})."
        )
    else:
        which = "the unstable cell is" if len(unstable) == 1 else "the unstable cells are"
        parts.append(
            f"The top-{size} circuit is stable under bootstrap in {len(stable)} of {n} cells (mean Jaccard "
            f"{min(j):.3f}–{max(j):.3f}); {which} {_names(unstable)}."
        )
    if replicates < MIN_REPLICATES:
        parts.append(
            f"With B = {replicates} bootstrap replicates (fewer than {MIN_REPLICATES}) the verdict stays undetermined: "
            f"rerun with bootstrap.replicates ≥ {MIN_REPLICATES} before relying on it."
        )
    f = [(r["label"], r["faithfulness"]) for r in rows if _ok(r.get("faithfulness"))]
    if f:
        values = [v for _, v in f]
        low = [name for name, v in f if v < LOW]
        where = "" if len(f) == 1 else f" ({min(values):.3f}–{max(values):.3f} across cells)"
        if not low:
            word = faithfulness_word(min(values))
            parts.append(f"Faithfulness of the top-{size} circuit is {word}{where}: it recovers most of the model's effect."
                         if word == "high" else f"Faithfulness of the top-{size} circuit is {word}{where}.")  # fmt: skip
        else:
            cells = "" if len(f) == 1 else f" in {len(low)} of {len(f)} cells"
            parts.append(
                f"Faithfulness of the top-{size} circuit is low{cells}{where}: it recovers less than half of the "
                "model's logit difference — consider larger circuits (see the faithfulness curve)."
            )
    if unstable:
        parts.append(
            "For the unstable cells, the section on how many prompts are enough estimates the prompts a stable "
            "circuit needs; the margins section shows whether near-ties at the cut explain the instability."
        )
    return " ".join(parts)


def cells(infos: list[dict]) -> str:
    """Where the run's time went: the cells' wall times, compilation and scoring."""
    timed = [i for i in infos if _ok(i.get("seconds"))]
    if not timed:
        return ""
    span = lambda xs: f"{min(xs):.0f} s" if max(xs) - min(xs) < 0.5 else f"{min(xs):.0f}–{max(xs):.0f} s"
    total = sum(i["seconds"] for i in timed)
    compiled = sum(i.get("compile_seconds") or 0.0 for i in timed)
    text = f"{len(timed)} cells took {total:.0f} s in all ({span([i['seconds'] for i in timed])} each"
    scoring = [i["estimator_seconds"] for i in timed if _ok(i.get("estimator_seconds"))]
    if scoring:
        text += f"; scoring {span(scoring)}"
    return text + f"); {compiled:.0f} s of it compiling kernels, which a second run of the same shapes skips."


def scores(rows: list[dict]) -> str:
    """Signal-to-noise of the headline circuit's edges: do single prompts identify the circuit?"""
    snr = [(r["label"], r["snr_median"]) for r in rows if _ok(r.get("snr_median"))]
    if not snr:
        return ""
    values = [v for _, v in snr]
    span = f"{values[0]:.2f}" if len(values) == 1 else f"{min(values):.2f}–{max(values):.2f} across cells"
    text = f"Median signal-to-noise (|mean| / std over prompts) of the circuit's edges: {span}. "
    if max(values) < 1:
        return text + (
            "A typical edge's score varies from prompt to prompt by more than its mean: a single prompt does not "
            "identify the circuit, and the mean over prompts carries sampling error the bootstrap measures."
        )
    if min(values) >= 1:
        return text + "A typical edge's mean stands clear of its prompt-to-prompt spread."
    return text + "In some cells a typical edge's score varies from prompt to prompt by more than its mean."


def jaccard(matrices: dict[str, np.ndarray]) -> str:
    """The B × B bootstrap Jaccard matrices: which cell's replicates agree least."""
    stats = {}
    for name, m in matrices.items():
        off = np.asarray(m)[~np.eye(len(m), dtype=bool)]
        if off.size:
            stats[name] = (float(off.mean()), float(np.quantile(off, 0.05)))
    if not stats:
        return "Too few replicates for pairwise Jaccards."
    lo = min(stats, key=lambda k: stats[k][0])
    hi = max(stats, key=lambda k: stats[k][0])
    text = (
        f"Replicate circuits agree least in {lo} (mean pairwise Jaccard {stats[lo][0]:.3f}; 5% of pairs below "
        f"{stats[lo][1]:.3f})"
    )
    if len(stats) > 1:
        text += f" and most in {hi} ({stats[hi][0]:.3f})"
    return (
        text + ". A uniformly bright matrix is a stable circuit; dark rows are replicates that found a different one."
    )


def inclusion(freqs: dict[str, np.ndarray], size: int) -> str:
    """Bootstrap inclusion frequencies: edges always in, in most, or in a minority of replicates."""
    parts = []
    for name, f in freqs.items():
        f = np.asarray(f)
        always, most = int((f >= 1).sum()), int((f >= 0.5).sum())
        rare = int(((f > 0) & (f < 0.5)).sum())
        parts.append(f"{name}: {always} edges in every replicate, {most} in at least half, {rare} in fewer than half")
        if len(parts) == 4 and len(freqs) > 4:
            parts.append(f"and {len(freqs) - 4} more cells")
            break
    return (
        f"Of the top-{size} circuits: " + "; ".join(parts) + ". An edge in only a minority of replicates is one a "
        "different sample of the same prompts would likely leave out."
    )


def curve(rows: list[dict]) -> str:
    """Faithfulness and stability against circuit size, per cell (first aggregation)."""
    if not rows:
        return ""
    agg = rows[0]["aggregation"]
    reached, never, jaccard_trend = [], [], []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        rs = sorted((r for r in rows if r["cell"] == cell and r["aggregation"] == agg), key=lambda r: r["size"])
        name = rs[0]["label"]
        f = [(r["size"], r["faithfulness"]) for r in rs if _ok(r.get("faithfulness"))]
        if f:
            at = [n for n, v in f if v >= HIGH]
            if at:
                reached.append(f"{name} at n = {at[0]}")
            else:
                best = max(f, key=lambda t: t[1])
                never.append(f"{name} (best {best[1]:.3f} at n = {best[0]})")
        j = [(r["size"], r["mean_jaccard"]) for r in rs if _ok(r["mean_jaccard"])]
        if len(j) >= 2:
            jaccard_trend.append(j[-1][1] - j[0][1])
    parts = []
    if reached:
        parts.append(f"Faithfulness reaches {HIGH} in " + _names(reached, 4))
    if never:
        parts.append(f"it stays below {HIGH} over the sizes swept in " + _names(never, 4))
    text = "; ".join(parts) + "." if parts else "Circuits were not evaluated."
    text = text[0].upper() + text[1:]
    if jaccard_trend:
        up = sum(d > 0.02 for d in jaccard_trend)
        down = sum(d < -0.02 for d in jaccard_trend)
        trend = (
            "rises with the circuit size" if up > down and up > len(jaccard_trend) / 2
            else "falls with the circuit size" if down > up and down > len(jaccard_trend) / 2
            else "changes little or not monotonically with the circuit size"
        )  # fmt: skip
        text += f" Stability (mean Jaccard) {trend} in most cells: a larger circuit is not always a more stable one."
    return text


def perturbations(perturbations: dict) -> str:
    """Cross-condition Jaccards: which factor of the grid changes the circuit most."""
    by = perturbations.get("mean_by_factor") or {}
    if not by:
        return "The grid varies no single factor between two cells, so no factor's effect is isolated."
    order = sorted(by, key=by.get)
    text = (
        f"Changing the {order[0]} changes the top-{perturbations['size']} circuit most (mean Jaccard between cells "
        f"that differ only in it: {by[order[0]]:.3f})"
    )
    if len(order) > 1:
        text += f"; the {order[-1]} least ({by[order[-1]]:.3f})"
    below = [f for f in order if by[f] < STABLE]
    if below:
        text += f". Below {STABLE}, the circuit found depends on that choice: " + _names(below, 5) + "."
    else:
        text += f". Every factor keeps the circuit at Jaccard ≥ {STABLE}."
    return text


def decomposition_name(key: str) -> str:
    """A decomposition's key in ``results/decomposition.json`` in words."""
    names = {"aggregated_scores": "aggregated edge scores", "membership": "edge membership of the circuits",
             "mean_jaccard": "bootstrap mean Jaccard", "circuit_error_task": "circuit error (task)",
             "membership_nested": "membership, cells and the replicates within them"}  # fmt: skip
    if key.startswith("membership_nested_"):
        return f"membership, {key.removeprefix('membership_nested_')} levels and the replicates within them"
    return names.get(key, key.replace("_", " "))


def decomposition(decomposition: dict) -> str:
    """The largest variance component of each decomposition."""
    parts = []
    for key, dec in decomposition.items():
        table = dec.get("table")
        if not table:
            continue
        rows = [r for r in table if _ok(r.get("share"))]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["share"])
        parts.append(f"{decomposition_name(key)}: {top['effect']} ({top['share']:.0%})")
    if not parts:
        return "No decomposition could be computed for this grid."
    return "The largest share of variance in each decomposition — " + "; ".join(parts) + "."


def prompts_needed(stability: dict[str, dict]) -> str:
    """Where each cell's bootstrap mean Jaccard reaches the bar as the prompts grow."""
    parts = []
    for name, st in stability.items():
        p = st.get("prompts_needed")
        if not p:
            continue
        if p["n_needed"] is None:
            parts.append(f"{name}: not within {p['sizes'][-1]} prompts")
        else:
            parts.append(f"{name}: about {p['n_needed']:.0f} prompts (it has {p['n_inputs']})")
    if not parts:
        return ""
    return f"Prompts a stable (Jaccard ≥ {STABLE}) top-n circuit needs — " + "; ".join(parts) + "."


def frontier(stability: dict[str, dict]) -> str:
    """Stability of the smallest circuits reaching each faithfulness target."""
    parts = []
    for name, st in stability.items():
        for t in st.get("faithfulness", {}).get("targets", []):
            if _ok(t.get("mean_jaccard")):
                word = "stable" if t["mean_jaccard"] >= STABLE else "not stable"
                parts.append(f"{name} at faithfulness ≥ {t['target']}: {word} (mean Jaccard {t['mean_jaccard']:.3f})")
    if not parts:
        return ""
    return (
        "The smallest circuits that reach a faithfulness target — "
        + "; ".join(parts[:6])
        + (f"; and {len(parts) - 6} more." if len(parts) > 6 else ".")
    )


def held_out(rows: list[dict]) -> str:
    """Optimism: in-sample against held-out faithfulness at the headline size."""
    gaps = []
    for r in rows:
        f, f_in = r.get("faithfulness"), r.get("faithfulness_in_sample")
        if r.get("eval_set") == "held-out" and _ok(f) and _ok(f_in):
            se = math.hypot(r.get("faithfulness_se") or 0.0, r.get("faithfulness_in_sample_se") or 0.0)
            gaps.append((r["label"], f_in - f, se))
    if not gaps:
        return "Circuits were not judged on held-out prompts."
    big = [name for name, d, se in gaps if d > 2 * se]
    lo, hi = min(d for _, d, _ in gaps), max(d for _, d, _ in gaps)
    span = f"{lo:+.3f}" if len(gaps) == 1 else f"{lo:+.3f} to {hi:+.3f}"
    if big:
        return (
            f"In-sample faithfulness minus held-out: {span}. The circuit fits its discovery prompts better than new "
            f"ones (by more than two standard errors) in {_names(big)}: judge it on the held-out number."
        )
    return (
        f"In-sample faithfulness minus held-out: {span}, within two standard errors everywhere: no sign that the "
        "circuit is fitted to its discovery prompts."
    )


def estimator_noise(noise: dict) -> str:
    """The estimators ranked by their median rank correlation with exact patching."""
    level = "edge" if noise.get("edge") else "node" if noise.get("node") else None
    if level is None:
        return ""
    by = {k: v["spearman_median"] for k, v in noise[level].items() if _ok(v.get("spearman_median"))}
    if not by:
        return ""
    order = sorted(by, key=by.get, reverse=True)
    text = (
        f"At {level} level, {order[0]} ranks closest to exact patching (median Spearman {by[order[0]]:.3f} per prompt)"
    )
    if len(order) > 1:
        text += f" and {order[-1]} farthest ({by[order[-1]]:.3f})"
    return text + ". Estimator noise adds to the prompts' own variance: both widen the bootstrap."
