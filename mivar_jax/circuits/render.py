"""Drawing circuits: Graphviz DOT text, and PNG files (``dot`` when installed, else matplotlib).

Edge colours: ``score`` maps the signed score on a diverging scale (blue negative, red positive,
relative to the largest |score| drawn); ``frequency`` maps an inclusion frequency in [0, 1]
(e.g. the share of bootstrap replicates holding the edge) from light grey to black, with width.
Layout: left to right by depth (input, then each layer's heads, then its MLP, then logits).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import numpy as np

from mivar_jax.circuits.pruning import slot_owner

COLOR_BY = ("score", "frequency")


def _edge_values(circuit, color_by: str, frequency: Any) -> np.ndarray:
    if color_by not in COLOR_BY:
        raise ValueError(f"unknown color_by {color_by!r}; choose from {list(COLOR_BY)}")
    if color_by == "frequency":
        if frequency is None:
            raise ValueError("color_by='frequency' needs frequency= (an [E] array in [0, 1])")
        values = np.asarray(frequency, np.float64)
        if values.shape != (circuit.graph.n_edges,) or np.any((values < 0) | (values > 1)):
            raise ValueError(f"frequency must be an array of shape ({circuit.graph.n_edges},) with values in [0, 1]")
        return values
    return (
        np.zeros(circuit.graph.n_edges) if circuit.scores is None else np.nan_to_num(circuit.scores.astype(np.float64))
    )


def _rgb(value: float, color_by: str, scale: float) -> tuple[float, float, float]:
    if color_by == "frequency":
        grey = 0.85 * (1 - value)
        return grey, grey, grey
    t = 0.0 if scale == 0 else float(np.clip(value / scale, -1, 1))
    return (1.0, 1 - t, 1 - t) if t >= 0 else (1 + t, 1 + t, 1.0)  # white → red, white → blue


def _hex(rgb) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def _edges_to_draw(circuit, color_by, frequency):
    g = circuit.graph
    values = _edge_values(circuit, color_by, frequency)
    edges = np.nonzero(circuit.edges)[0]
    scale = float(np.abs(values[edges]).max()) if edges.size else 0.0
    owner = slot_owner(g)
    for e in edges:
        dst = g.dst_names[g.edge_dst[e]]
        label = dst[dst.index("<") + 1] if "<" in dst else ""
        yield int(g.edge_src[e]), int(owner[g.edge_dst[e]]), label, values[e], _rgb(values[e], color_by, scale)


def to_dot(circuit, color_by: str = "score", frequency: Any = None) -> str:
    g = circuit.graph
    lines = ["digraph circuit {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor="#f2f2f2"];']
    lines += [f'  "{g.node_names[n]}";' for n in np.nonzero(circuit.nodes)[0]]
    for src, node, label, value, rgb in _edges_to_draw(circuit, color_by, frequency):
        width = 1 + 3 * value if color_by == "frequency" else 1.5
        attrs = f'color="{_hex(rgb)}", penwidth={width:.2f}, tooltip="{value:.4g}"'
        if label:
            attrs += f', label="{label}"'
        lines.append(f'  "{g.node_names[src]}" -> "{g.node_names[node]}" [{attrs}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _position(g, node: int | np.integer) -> tuple[float, float]:
    if node == 0:
        return 0.0, (g.n_heads - 1) / 2
    if node == g.n_src:
        return 2.0 * g.n_layers + 1, (g.n_heads - 1) / 2
    layer, k = divmod(node - 1, g.n_heads + 1)
    return (2.0 * layer + 1, float(k)) if k < g.n_heads else (2.0 * layer + 2, (g.n_heads - 1) / 2)


def packed_positions(g, nodes) -> dict[int, tuple[float, float]]:
    """(x, y) of each node: columns by depth (input, each layer's heads, each MLP, logits), only
    the columns that hold one of ``nodes``, packed side by side; y = the head index."""
    xy = {int(n): _position(g, n) for n in nodes}
    col = {x: i for i, x in enumerate(sorted({x for x, _ in xy.values()}))}
    return {n: (float(col[x]), y) for n, (x, y) in xy.items()}


def render(circuit, path: str | os.PathLike, color_by: str = "score", frequency: Any = None) -> str:
    path = os.fspath(path)
    dot = to_dot(circuit, color_by, frequency)  # validates the arguments first
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tpng", "-o", path], input=dot.encode(), check=True, capture_output=True)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = circuit.graph
    nodes = np.nonzero(circuit.nodes)[0]
    pos = packed_positions(g, nodes)
    n_columns = len({x for x, _ in pos.values()})
    width = max(6.0, 1.15 * n_columns + 1)
    fig, ax = plt.subplots(figsize=(min(width, 24.0), max(3, 0.45 * g.n_heads + 1)))
    for src, node, _, _, rgb in _edges_to_draw(circuit, color_by, frequency):
        (x0, y0), (x1, y1) = pos[src], pos[node]
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=rgb, lw=1.2, alpha=0.9))
    for n in nodes:
        ax.text(
            *pos[n],
            g.node_names[n],
            ha="center",
            va="center",
            fontsize=7,
            bbox=dict(boxstyle="round", fc="#f2f2f2", ec="#888888"),
        )
    ax.set_xlim(-0.7, max(n_columns - 0.3, 0.7))
    ax.set_ylim(-1, g.n_heads)
    ax.invert_yaxis()
    ax.axis("off")
    ax.set_title(f"{circuit.n_edges} edges, {circuit.n_nodes} nodes (colour: {color_by})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
