"""Circuit: a set of edges of a Graph (a boolean mask in the Graph's edge order) and its nodes."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from mivar_jax.circuits.pruning import slot_owner
from mivar_jax.graph import Graph


@dataclasses.dataclass(eq=False)
class Circuit:
    """Edges ``edges`` [E] bool of ``graph``; ``scores`` [E] the aggregated scores it was
    selected from (if any); ``n_selected`` the edges chosen before pruning (if selected).

    Nodes ([n_src + 1], ``logits`` last) are those touched by an edge; ``logits`` counts as a
    node of any non-empty circuit."""

    graph: Graph
    edges: np.ndarray
    scores: np.ndarray | None = None
    n_selected: int | None = None

    def __post_init__(self):
        self.edges = np.asarray(self.edges)
        if self.edges.shape != (self.graph.n_edges,):
            raise ValueError(
                f"edge mask must have shape ({self.graph.n_edges},) for {self.graph}, got {self.edges.shape}"
            )
        self.edges = self.edges.astype(bool)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, np.float32)
            if self.scores.shape != (self.graph.n_edges,):
                raise ValueError(f"scores must have shape ({self.graph.n_edges},), got {self.scores.shape}")

    # ----------------------------------------------------------------------------- contents
    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def nodes(self) -> np.ndarray:
        g = self.graph
        nodes = np.zeros(g.n_src + 1, bool)
        nodes[g.edge_src[self.edges]] = True
        nodes[slot_owner(g)[g.edge_dst[self.edges]]] = True
        return nodes

    @property
    def n_nodes(self) -> int:
        return int(self.nodes.sum())

    @property
    def edge_names(self) -> list[str]:
        return [self.graph.edge_names[e] for e in np.nonzero(self.edges)[0]]

    @property
    def node_names(self) -> list[str]:
        return [self.graph.node_names[n] for n in np.nonzero(self.nodes)[0]]

    def jaccard(self, other: Circuit, nodes: bool = False) -> float:
        """|A ∩ B| / |A ∪ B| of the edge sets (or node sets); 1 for two empty circuits."""
        if other.graph != self.graph:
            raise ValueError(f"circuits of different graphs: {self.graph} vs {other.graph}")
        a, b = (self.nodes, other.nodes) if nodes else (self.edges, other.edges)
        union = (a | b).sum()
        return float((a & b).sum() / union) if union else 1.0

    def __repr__(self) -> str:
        sel = "" if self.n_selected is None else f", {self.n_selected} selected before pruning"
        return f"Circuit({self.n_edges} edges, {self.n_nodes} nodes{sel}; {self.graph})"

    # ----------------------------------------------------------------------------- files
    def to_graph_json(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """The reference library's graph JSON: every edge with ``score`` and ``in_graph``,
        every node with ``in_graph`` (node membership as computed here)."""
        scores = np.zeros(self.graph.n_edges, np.float32) if self.scores is None else self.scores
        return self.graph.to_json(path, scores=scores, in_graph=self.edges, nodes_in_graph=self.nodes[:-1])

    @classmethod
    def from_graph_json(cls, source: str | os.PathLike | dict[str, Any]) -> Circuit:
        """A circuit from the reference library's graph JSON (its ``in_graph`` edges and scores)."""
        g = Graph.from_json(source)
        scores = None if np.all(g.scores == 0) else g.scores
        return cls(g.graph, g.in_graph, scores=scores)

    def to_mib(self, out_dir: str | os.PathLike, task: str, model: str, name: str = "circuit") -> str:
        """Write the circuit for a MIB circuit-localization submission: the graph JSON at
        ``out_dir/{task}_{model}/{name}.json`` (MIB reads the reference library's format; one
        file per circuit size, or one file of scores for all edges). Returns the path."""
        folder = os.path.join(os.fspath(out_dir), f"{task}_{model}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}.json")
        self.to_graph_json(path)
        return path

    # ----------------------------------------------------------------------------- drawing
    def to_dot(self, color_by: str = "score", frequency: Any = None) -> str:
        """Graphviz DOT text; edges coloured by ``score`` (blue < 0 < red) or by inclusion
        ``frequency`` ([E] in [0, 1], e.g. from a bootstrap)."""
        from mivar_jax.circuits.render import to_dot

        return to_dot(self, color_by, frequency)

    def render(self, path: str | os.PathLike, color_by: str = "score", frequency: Any = None) -> str:
        """Draw the circuit to a PNG (graphviz's ``dot`` when installed, else matplotlib)."""
        from mivar_jax.circuits.render import render

        return render(self, path, color_by, frequency)
