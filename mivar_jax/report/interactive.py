"""Interactive views of the report (plotly; plotly.js is embedded once per page, so the file
opens offline): the circuit graph (zoom, hover an edge for its score, inclusion frequency and
per-input distribution, a slider filtering edges by inclusion frequency), the bootstrap Jaccard
matrices, the single-input score distributions and overlaid curves. Each function returns an HTML
fragment; ``PLOTLY_JS`` is the one ``<script>`` that must come before them."""

from __future__ import annotations

import functools
import html

import numpy as np
import plotly.graph_objects as go

from mivar_jax.circuits.pruning import slot_owner
from mivar_jax.circuits.render import packed_positions
from mivar_jax.graph import Graph

SPARK = "▁▂▃▄▅▆▇█"
MAX_EDGES = 600  # the circuit view draws at most this many edges (the most frequent)
CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": True}


@functools.cache
def plotly_js() -> str:
    """The ``<script>`` holding plotly.js (about 5 MB), placed once before the views."""
    from plotly.offline import get_plotlyjs

    return f"<script>{get_plotlyjs()}</script>"


def _html(fig: go.Figure, div_id: str, height: int) -> str:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=50, b=50))
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG, default_height=height)
    return f"<div class='view' data-view='{div_id}'>{body}</div>"


def sparkline(x: np.ndarray, bins: int = 10) -> str:
    """A histogram of ``x`` as block characters (▁ … █), lowest values on the left."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return ""
    if x.min() == x.max():
        return SPARK[-1]
    counts, _ = np.histogram(x, bins=bins)
    levels = np.ceil(counts / counts.max() * (len(SPARK) - 1)).astype(int)
    return "".join(" " if c == 0 else SPARK[v] for c, v in zip(counts, levels, strict=True))


def circuit_view(
    graph: Graph,
    frequency: np.ndarray,
    score: np.ndarray,
    per_input: np.ndarray | None,
    edges: np.ndarray,
    *,
    div_id: str = "circuit-view",
    title: str = "",
    start: float = 0.5,
) -> str:
    """The edges ``edges`` ([k] indices into the graph, e.g. those ever included by a bootstrap)
    drawn left to right by depth; ``frequency``/``score`` are [E] (inclusion frequency, the
    aggregated score), ``per_input`` [N, k] the single-input scores of those edges (None: not
    shown). A slider keeps the edges with frequency ≥ a threshold (``start`` at first)."""
    edges = np.asarray(edges)
    if edges.size == 0:
        return "<p>No edge was in any replicate's circuit (every circuit pruned to nothing).</p>"
    edges = edges[np.argsort(-frequency[edges], kind="stable")[:MAX_EDGES]]
    thresholds = [k / 10 for k in range(1, 11)]  # the slider's steps
    active = min(range(len(thresholds)), key=lambda i: abs(thresholds[i] - start))
    start = thresholds[active]
    owner = slot_owner(graph)
    src, dst = graph.edge_src[edges], owner[graph.edge_dst[edges]]
    nodes = np.unique(np.concatenate([src, dst]))
    pos = packed_positions(graph, nodes)
    # bins of inclusion frequency: [0.1k, 0.1(k+1)) for k = 0…9, and exactly 1 as bin 10
    bins = np.minimum(np.floor(frequency[edges] * 10 + 1e-9).astype(int), 10)
    colors = [f"rgba(30,60,140,{0.25 + 0.07 * k:.2f})" for k in range(11)]
    fig = go.Figure()
    traces_of_bin = {}
    for k in range(11):
        pick = np.nonzero(bins == k)[0]
        if not pick.size:
            continue
        xs, ys, hx, hy, text = [], [], [], [], []
        for i in pick:
            e = edges[i]
            (x0, y0), (x1, y1) = pos[src[i]], pos[dst[i]]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
            name = graph.dst_names[graph.edge_dst[e]]
            t = {"q": 0.35, "k": 0.5, "v": 0.65}.get(name[name.index("<") + 1], 0.5) if "<" in name else 0.5
            hx.append(x0 + t * (x1 - x0))
            hy.append(y0 + t * (y1 - y0))
            lines = [f"<b>{html.escape(graph.edge_names[e])}</b>",
                     f"in {frequency[e]:.0%} of the bootstrap replicates", f"aggregated score {score[e]:.4g}"]  # fmt: skip
            if per_input is not None:
                col = per_input[:, i]
                lines += [
                    f"per input: mean {col.mean():.3g}, std {col.std():.3g} (N = {col.size})",
                    f"range [{col.min():.3g}, {col.max():.3g}], positive on {(col > 0).mean():.0%}",
                    f"histogram: {sparkline(col)}",
                ]
            text.append("<br>".join(lines))
        label = "frequency 1" if k == 10 else f"frequency {k / 10:.1f}–{(k + 1) / 10:.1f}"
        visible = k / 10 >= start - 1e-9
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name=label, legendgroup=label,
                                 line=dict(color=colors[k], width=0.6 + 0.35 * k), visible=visible))  # fmt: skip
        fig.add_trace(go.Scatter(x=hx, y=hy, mode="markers", text=text, hoverinfo="text", name=label,
                                 legendgroup=label, showlegend=False, visible=visible,
                                 marker=dict(size=7, color=colors[k], symbol="diamond")))  # fmt: skip
        traces_of_bin[k] = (len(fig.data) - 2, len(fig.data) - 1)
    # the nodes of the edges each slider step keeps: one node trace per step, shown with it
    node_trace = {}
    for t in thresholds:
        keep = frequency[edges] >= t - 1e-9
        on = np.unique(np.concatenate([src[keep], dst[keep]])) if keep.any() else np.zeros(0, int)
        names = [graph.node_names[n] for n in on]
        fig.add_trace(go.Scatter(x=[pos[n][0] for n in on], y=[pos[n][1] for n in on], mode="markers+text",
                                 text=names, textposition="middle center", textfont=dict(size=8),
                                 hovertext=names, hoverinfo="text", name="nodes", showlegend=False,
                                 visible=abs(t - start) < 1e-9,
                                 marker=dict(size=26, color="#f2f2f2", line=dict(color="#888", width=1))))  # fmt: skip
        node_trace[t] = len(fig.data) - 1
    steps = []
    for t in thresholds:
        vis = [False] * len(fig.data)
        for k, (a, b) in traces_of_bin.items():
            vis[a] = vis[b] = k / 10 >= t - 1e-9
        vis[node_trace[t]] = True
        shown = int((frequency[edges] >= t - 1e-9).sum())
        steps.append(dict(method="restyle", args=[{"visible": vis}], label=f"{t:.1f}",
                          name=f"{shown} edges"))  # fmt: skip
    width = max(x for x, _ in pos.values()) + 1
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix="inclusion frequency ≥ "), pad=dict(t=40))],
        xaxis=dict(visible=False, range=[-0.8, width - 0.2]),
        yaxis=dict(visible=False, autorange="reversed"),
        hovermode="closest",
        dragmode="pan",
        legend=dict(orientation="h", y=1.02, x=0, font=dict(size=9)),
    )
    return _html(fig, div_id, height=max(420, 36 * graph.n_heads + 220))


def jaccard_view(matrices: dict[str, np.ndarray], *, div_id: str = "jaccard-view") -> str:
    """The B × B bootstrap Jaccard matrices, one cell at a time (a menu picks the cell)."""
    fig = go.Figure()
    names = list(matrices)
    for i, (name, m) in enumerate(matrices.items()):
        m = np.asarray(m, np.float64)
        fig.add_trace(go.Heatmap(z=m, zmin=0, zmax=1, colorscale="Viridis", visible=i == 0, name=name,
                                 hovertemplate="replicates %{y} and %{x}: Jaccard %{z:.3f}<extra>" + html.escape(name)
                                 + "</extra>", colorbar=dict(title="Jaccard")))  # fmt: skip
    buttons = [
        dict(label=name, method="update", args=[{"visible": [j == i for j in range(len(names))]}, {"title.text": name}])
        for i, name in enumerate(names)
    ]
    fig.update_layout(
        title=dict(text=names[0] if names else "", font=dict(size=13)),
        updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.15, yanchor="top")] if len(names) > 1 else [],
        xaxis=dict(title="replicate", constrain="domain"),
        yaxis=dict(title="replicate", autorange="reversed", scaleanchor="x"),
    )
    return _html(fig, div_id, height=520)


def score_view(cells: dict[str, tuple[list[str], np.ndarray]], *, div_id: str = "score-view") -> str:
    """Single-input scores of each cell's top edges: ``{cell: (edge names, scores [N, k])}``; one
    box per edge with every input as a point (hover: input index and score)."""
    fig = go.Figure()
    spans = []
    for c, (cell, (edge_names, scores)) in enumerate(cells.items()):
        first = len(fig.data)
        for i, name in enumerate(edge_names):
            col = np.asarray(scores[:, i], np.float64)
            fig.add_trace(go.Box(x=col, name=name, boxpoints="all", jitter=0.4, pointpos=0, orientation="h",
                                 visible=c == 0, marker=dict(size=4), boxmean=True, showlegend=False,
                                 customdata=np.arange(col.size),
                                 hovertemplate="input %{customdata}: %{x:.4g}<extra>%{y}</extra>"))  # fmt: skip
        spans.append((cell, first, len(fig.data)))
    n = len(fig.data)
    buttons = [
        dict(label=name, method="update", args=[{"visible": [a <= j < b for j in range(n)]}, {"title.text": name}])
        for name, a, b in spans
    ]
    fig.update_layout(
        title=dict(text=spans[0][0] if spans else "", font=dict(size=13)),
        updatemenus=[dict(buttons=buttons, x=1.0, xanchor="right", y=1.12, yanchor="top")] if len(spans) > 1 else [],
        xaxis=dict(title="single-input score: metric(edge patched) − metric(clean)", zeroline=True),
        yaxis=dict(autorange="reversed", tickfont=dict(size=9)),
    )
    k = max((len(v[0]) for v in cells.values()), default=1)
    return _html(fig, div_id, height=max(360, 34 * k + 140))


def curves_view(
    series: dict[str, list[tuple[int, float | None, float | None]]],
    style: dict[str, tuple[int, int]] | None = None,
    *,
    div_id: str = "curves-view",
) -> str:
    """Faithfulness and mean Jaccard against circuit size, one line per series:
    ``{name: [(size, faithfulness, mean Jaccard), ...]}`` (None: not computed); ``style`` gives
    each series (colour, dash) indices, e.g. the cell and the run."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("faithfulness vs circuit size", "stability vs circuit size"))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    sizes = sorted({p[0] for pts in series.values() for p in pts})
    for i, (name, pts) in enumerate(series.items()):
        c, d = (style or {}).get(name, (i, 0))
        line = dict(color=palette[c % len(palette)], dash=dashes[d % len(dashes)])
        for col, values in ((1, [p[1] for p in pts]), (2, [p[2] for p in pts])):
            if all(v is None for v in values):
                continue
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=values, mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 2 or all(p[2] is None for p in pts),
                                     line=line, hovertemplate=f"{html.escape(name)}<br>n = %{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=1, col=col)  # fmt: skip
    fig.add_hline(y=0.8, line=dict(color="#c0392b", dash="dash", width=1), row=1, col=2)
    fig.update_xaxes(type="log", title="circuit size n (top-n edges)", tickvals=sizes, ticktext=[str(n) for n in sizes])
    fig.update_yaxes(title="faithfulness", row=1, col=1)
    fig.update_yaxes(title="bootstrap mean Jaccard", range=[0, 1.02], row=1, col=2)
    fig.update_layout(legend=dict(orientation="h", y=-0.25, font=dict(size=9)))
    return _html(fig, div_id, height=480)
