"""The report's figures (matplotlib, PNG): each function draws one from a run directory's files
and returns the path it wrote."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import ndtr, ndtri  # noqa: E402

from mivar_jax.circuits import Circuit  # noqa: E402
from mivar_jax.scores import Scores  # noqa: E402
from mivar_jax.stats import edge_variability  # noqa: E402

DPI = 110


def _save(fig, path: str, tight: bool = True) -> str:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def score_distributions(scores: Scores, path: str, top: int = 12, title: str = "") -> str:
    """Single-input scores of the ``top`` edges with the largest |mean|: one box per edge, with
    every input drawn as a point, so the spread behind each mean is visible; each edge is labelled
    with its signal-to-noise ratio |mean|/std (``stats.EdgeVariability.snr``)."""
    var = edge_variability(scores)
    order = np.argsort(-np.abs(var.mean), kind="stable")[:top]
    snr = var.snr[order]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(order) + 1.4))
    columns = scores.per_input[:, order]  # only these edges' scores (scores on disk stay there)
    data = [columns[:, i] for i in range(len(order))][::-1]
    ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=False, medianprops=dict(color="black"))
    rng = np.random.default_rng(0)
    for i, col in enumerate(data, start=1):
        ax.scatter(col, i + rng.uniform(-0.18, 0.18, col.size), s=6, alpha=0.45, color="tab:blue", lw=0)
        ax.scatter([col.mean()], [i], marker="D", color="tab:red", s=22, zorder=3)
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    labels = [f"{scores.names[e]}  (SNR {r:.2f})" for e, r in zip(order, snr, strict=True)]
    ax.set_yticks(range(1, len(order) + 1), labels[::-1], fontsize=8)
    ax.set_xlabel("single-input score: metric(edge patched) − metric(clean)   (◆ mean)")
    ax.set_title(title or f"Per-input scores of the top {len(order)} edges (N = {scores.n_inputs})", fontsize=10)
    return _save(fig, path)


def jaccard_heatmaps(matrices: dict[str, np.ndarray], path: str, size: int) -> str:
    """B × B bootstrap Jaccard matrices, one panel per cell."""
    k = len(matrices)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.8, 3.4 * rows), squeeze=False)
    for ax, (name, j) in zip(axes.flat, matrices.items(), strict=False):
        im = ax.imshow(j, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        off = j[~np.eye(len(j), dtype=bool)]
        ax.set_title(f"{name}\nmean {off.mean():.3f}", fontsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_label_text("replicate", fontsize=8)
            axis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="Jaccard")
    fig.suptitle(f"Bootstrap: pairwise Jaccard of the pruned top-{size} circuits", fontsize=10)
    return _save(fig, path, tight=False)  # no tight_layout: the colorbar spans every panel


def inclusion_frequencies(freq: dict[str, np.ndarray], names: tuple[str, ...], path: str, size: int, top: int = 30):
    """Left: the ``top`` edges of the first cell by bootstrap inclusion frequency. Right: every
    cell's frequencies sorted, the shape of stability (a step at 1 = stable circuit)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.25 * top + 1.8), gridspec_kw={"width_ratios": [1.2, 1]})
    first, f0 = next(iter(freq.items()))
    order = np.argsort(-f0, kind="stable")[:top][::-1]
    a.barh(range(len(order)), f0[order], color=["tab:green" if v >= 0.5 else "tab:orange" for v in f0[order]])
    a.set_yticks(range(len(order)), [names[e] for e in order], fontsize=7)
    a.axvline(0.5, color="grey", ls="--", lw=0.8)
    a.set(xlim=(0, 1), xlabel="inclusion frequency (share of replicates)")
    a.set_title(f"{first}: top {len(order)} edges (green: majority circuit)", fontsize=9)
    for name, f in freq.items():
        nz = np.sort(f[f > 0])[::-1]
        b.plot(np.arange(1, nz.size + 1), nz, label=name, lw=1.2)
    b.axvline(size, color="grey", ls=":", lw=0.8)
    b.set(xscale="log", ylim=(0, 1.02), xlabel="edge rank (edges ever included)", ylabel="inclusion frequency")
    b.set_title(f"Inclusion frequencies, top-{size} circuits", fontsize=9)
    b.legend(fontsize=6)
    return _save(fig, path)


def faithfulness_curve(rows: list[dict], path: str, n_edges_total: int) -> str:
    """Circuit size vs faithfulness (the CPR curve over the swept sizes) and vs bootstrap mean
    Jaccard, one line per cell (first aggregation)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    agg = rows[0]["aggregation"]
    for cell in dict.fromkeys(r["cell"] for r in rows):
        rs = sorted((r for r in rows if r["cell"] == cell and r["aggregation"] == agg), key=lambda r: r["size"])
        sizes = [r["size"] for r in rs]
        if all(r["faithfulness"] is not None for r in rs):
            a.plot(sizes, [r["faithfulness"] for r in rs], marker="o", ms=3, label=rs[0]["label"])
        b.plot(sizes, [r["mean_jaccard"] for r in rs], marker="o", ms=3, label=rs[0]["label"])
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel(f"circuit size n (top-n edges before pruning, of {n_edges_total:,})")
    a.axhline(1, color="grey", lw=0.8, ls="--")
    a.set_ylabel("faithfulness (m(C) − m(∅)) / (m(full) − m(∅))")
    a.set_title("Faithfulness vs circuit size (CPR curve)", fontsize=10)
    b.axhline(0.8, color="tab:red", lw=0.8, ls="--", label="stability bar 0.8")
    b.set(ylim=(0, 1.02), ylabel="bootstrap mean pairwise Jaccard")
    b.set_title("Stability vs circuit size", fontsize=10)
    b.legend(fontsize=6)
    if a.lines:
        a.legend(fontsize=6)
    else:
        a.text(0.5, 0.5, "circuits were not evaluated", ha="center", transform=a.transAxes)
    return _save(fig, path)


def placeholder(path: str, text: str) -> str:
    """A small figure that says why a figure is absent."""
    fig, ax = plt.subplots(figsize=(6, 1.2))
    _empty(ax, text)
    return _save(fig, path)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.axis("off")


def prompts_needed(stability: dict[str, dict], path: str) -> str:
    """Mean pairwise Jaccard of the headline circuit against the number of prompts (m-out-of-N
    bootstrap, ``stats.prompts_needed``), one line per cell with its Monte-Carlo band."""
    fig, ax = plt.subplots(figsize=(8, 4))
    done = {k: v["prompts_needed"] for k, v in stability.items() if "prompts_needed" in v}
    if not done:
        _empty(ax, "not computed (stability.prompts_needed = false)")
        return _save(fig, path)
    for label, p in done.items():
        (line,) = ax.plot(p["sizes"], p["mean_jaccard"], marker="o", ms=3, label=label)
        ax.fill_between(p["sizes"], p["jaccard_low"], p["jaccard_high"], color=line.get_color(), alpha=0.15, lw=0)
        ax.axvline(p["n_inputs"], color=line.get_color(), lw=0.6, ls=":")
    first = next(iter(done.values()))
    ax.axhline(first["target"], color="tab:red", lw=0.8, ls="--", label=f"stability bar {first['target']}")
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="prompts m (dotted: the prompts the study has)")
    ax.set_ylabel("bootstrap mean pairwise Jaccard")
    ax.set_title(f"How many prompts are enough: top-{first['n_edges']} circuit", fontsize=10)
    ax.legend(fontsize=6)
    return _save(fig, path)


def stability_frontier(stability: dict[str, dict], path: str) -> str:
    """Mean pairwise Jaccard against mean faithfulness of the replicates' circuits over the size
    grid (``stats.faithful_stability``): stability at the faithfulness a circuit achieves."""
    fig, ax = plt.subplots(figsize=(8, 4))
    done = {
        k: v["faithfulness"]["targets"][0] for k, v in stability.items() if v.get("faithfulness", {}).get("targets")
    }
    if not done:
        _empty(ax, "not computed (stability.faithfulness = [])")
        return _save(fig, path)
    for label, t in done.items():
        ax.plot(t["frontier_faithfulness"], t["frontier_jaccard"], marker="o", ms=3, label=label)
    for f in {t["target"] for v in stability.values() for t in v.get("faithfulness", {}).get("targets", [])}:
        ax.axvline(f, color="grey", lw=0.7, ls=":")
    ax.axhline(0.8, color="tab:red", lw=0.8, ls="--", label="stability bar 0.8")
    ax.set(ylim=(0, 1.02), xlabel="mean faithfulness of the replicate circuits (dotted: targets)")
    ax.set_ylabel("mean pairwise Jaccard")
    ax.set_title("Stability–faithfulness frontier (one point per circuit size)", fontsize=10)
    ax.legend(fontsize=6)
    return _save(fig, path)


def margins(
    panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str, size: int, confidence: float, span: float = 6.0
) -> str:
    """Each edge's margin to the top-n cut (in bootstrap standard errors, ``stats.selection_noise``)
    against the share of replicates that kept it, with Φ(z), what the margin alone predicts: edges
    on the curve's slope are decided by noise at the cut."""
    fig, ax = plt.subplots(figsize=(8, 4))
    if not panels:
        _empty(ax, "not computed (stability.margins = false)")
        return _save(fig, path)
    for label, (z, f) in panels.items():
        near = np.isfinite(z) & (np.abs(z) < span)
        ax.scatter(z[near], f[near], s=7, alpha=0.5, lw=0, label=f"{label} ({near.sum()} edges within ±{span:g} SE)")
    grid = np.linspace(-span, span, 200)
    ax.plot(grid, ndtr(grid), color="black", lw=1, label="Φ(z): the margin's prediction")
    band = float(ndtri((1 + confidence) / 2))
    ax.axvspan(-band, band, color="grey", alpha=0.12, lw=0)
    ax.set(ylim=(-0.02, 1.02), xlabel=f"margin to the top-{size} cut (bootstrap standard errors; band: ±{band:.2f})")
    ax.set_ylabel("share of replicates keeping the edge")
    ax.set_title("Scoring noise vs the cut: edges near the cut flip between replicates", fontsize=10)
    ax.legend(fontsize=6)
    return _save(fig, path)


def held_out(rows: list[dict], path: str) -> str:
    """Faithfulness of the full-data circuits by size, on held-out prompts (solid) and on the
    discovery prompts (dashed): the optimism of judging a circuit on the prompts that chose it."""
    fig, ax = plt.subplots(figsize=(8, 4))
    agg = rows[0]["aggregation"] if rows else None
    drew = False
    for cell in dict.fromkeys(r["cell"] for r in rows):
        rs = sorted((r for r in rows if r["cell"] == cell and r["aggregation"] == agg), key=lambda r: r["size"])
        sizes = [r["size"] for r in rs]
        if rs[0].get("eval_set") != "held-out" or any(r["faithfulness_in_sample"] is None for r in rs):
            continue
        (line,) = ax.plot(sizes, [r["faithfulness"] for r in rs], marker="o", ms=3, label=f"{rs[0]['label']} held out")
        ax.plot(sizes, [r["faithfulness_in_sample"] for r in rs], ls="--", color=line.get_color(), lw=1)
        drew = True
    if not drew:
        _empty(ax, "no held-out evaluation (data.holdout = 0 or circuits.evaluate = false)")
        return _save(fig, path)
    ax.set(xscale="log", xlabel="circuit size n (top-n edges before pruning)", ylabel="faithfulness")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_title("Held-out (solid) vs in-sample (dashed) faithfulness", fontsize=10)
    ax.legend(fontsize=6)
    return _save(fig, path)


def variance_decomposition(decomposition: dict, path: str) -> str:
    """Share of the sum of squares of each effect, one bar per decomposed quantity."""
    done = {k: v for k, v in decomposition.items() if "table" in v}
    fig, ax = plt.subplots(figsize=(10, 0.6 * max(len(done), 1) + 2))
    if not done:
        ax.text(0.5, 0.5, "no decomposition: the grid has no factor with two or more levels", ha="center")
        ax.axis("off")
        return _save(fig, path)
    effects = list(dict.fromkeys(e["effect"] for v in done.values() for e in v["table"]))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(effects), 2)))
    for i, v in enumerate(done.values()):
        left = 0.0
        for e in v["table"]:
            ax.barh(i, e["ss_share"], left=left, color=colors[effects.index(e["effect"])], label=e["effect"])
            left += e["ss_share"]
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_yticks(range(len(done)), list(done), fontsize=8)
    ax.set(xlim=(0, 1), xlabel="share of the total sum of squares")
    ax.set_title("Variance decomposition over the study grid", fontsize=10)
    return _save(fig, path)


def perturbation_jaccard(perturbations: dict, path: str) -> str:
    """C × C Jaccard of the cells' full-data circuits at the headline size."""
    j = np.asarray(perturbations["jaccard"])
    names = perturbations["labels"]
    side = max(5.0, 0.6 * len(names) + 3.0)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(j, vmin=0, vmax=1, cmap="viridis")
    for (r, c), v in np.ndenumerate(j):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Jaccard")
    ax.set_title(f"Full-data top-{perturbations['size']} circuits across cells", fontsize=10)
    return _save(fig, path)


def majority_circuit(circuit: Circuit, frequency: np.ndarray, path: str) -> str:
    """The majority circuit (edges in ≥ 50% of replicates), edges shaded by inclusion frequency."""
    return circuit.render(path, color_by="frequency", frequency=frequency)
