"""The computational graph of a transformer as edges, in EAP-IG's conventions.

Source nodes (their outputs are written to the residual stream), in order:
``input``, then per layer l: ``a{l}.h0`` … ``a{l}.h{H-1}``, ``m{l}``.

Destination slots (each reads its own copy of the residual stream), in the reference
library's backward order: per layer l: ``a{l}.h0<q>`` … ``a{l}.h{H-1}<q>``, then all ``<k>``,
then all ``<v>``, then ``m{l}``; finally ``logits``.

An edge u→v exists iff u is upstream of v: u is ``input`` or lies in an earlier layer;
``m{l}`` also reads the heads of layer l (sequential blocks); ``logits`` reads every source.

The flat edge index ``E`` enumerates valid (src, dst) pairs ordered by destination slot, then by
source: edges into the same slot are contiguous and ordered as the sources. Dense arrays are
``[n_src, n_dst]``; ``Graph.to_dense`` / ``Graph.to_flat`` convert.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import numpy as np

from mivar_jax._io import atomic_write_text

_QKV = "qkv"


@dataclasses.dataclass(frozen=True)
class GraphJSON:
    """What an EAP-IG graph JSON holds: the graph, edge scores / membership, node membership.

    ``scores`` and ``in_graph`` are flat ``[E]`` arrays in this Graph's edge order;
    ``node_scores`` is ``[n_src]`` or None; ``nodes_in_graph`` is ``[n_src]``.
    """

    graph: Graph
    scores: np.ndarray
    in_graph: np.ndarray
    nodes_in_graph: np.ndarray
    node_scores: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Graph:
    """Nodes, destination slots and edges of a decoder-only transformer (hashable, static)."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    d_model: int = 0  # only recorded in the JSON config, as the reference does

    def __post_init__(self):
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"Graph needs n_layers ≥ 1 and n_heads ≥ 1, got {self.n_layers}, {self.n_heads}")

    # ----------------------------------------------------------------------------- sizes
    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.shape[0])

    @property
    def slots_per_layer(self) -> int:
        return 3 * self.n_heads + 1

    # ----------------------------------------------------------------------------- indices
    def src_index(self, name: str) -> int:
        """Index of a source node (``input``, ``a3.h1``, ``m2``)."""
        return self._index("source node", name)

    def dst_index(self, name: str) -> int:
        """Index of a destination slot (``a3.h1<q>``, ``m2``, ``logits``)."""
        return self._index("destination slot", name)

    def _index(self, what: str, name: str) -> int:
        if name not in self._lookups[what]:
            raise KeyError(f"unknown {what} {name!r} for a {self.n_layers}-layer, {self.n_heads}-head graph")
        return self._lookups[what][name]

    def edge_index(self, name: str) -> int:
        """Flat index of an edge named ``"src->dst"`` (e.g. ``"a0.h1->a2.h3<q>"``)."""
        src, sep, dst = name.partition("->")
        if not sep:
            raise KeyError(f"edge name {name!r} lacks '->'")
        s, d = self.src_index(src), self.dst_index(dst)
        e = int(self._dense_to_flat[s, d])
        if e < 0:
            raise KeyError(f"{name!r} is not an edge: {src} is not upstream of {dst}")
        return e

    @functools.cached_property
    def src_names(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return tuple(names)

    @functools.cached_property
    def dst_names(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            for letter in _QKV:
                names += [f"a{layer}.h{h}<{letter}>" for h in range(self.n_heads)]
            names.append(f"m{layer}")
        return tuple(names + ["logits"])

    @functools.cached_property
    def node_names(self) -> tuple[str, ...]:
        """All nodes as in the reference JSON: the sources, then ``logits``."""
        return self.src_names + ("logits",)

    @functools.cached_property
    def _lookups(self) -> dict[str, dict[str, int]]:
        """Name → index, of the source nodes and of the destination slots."""
        names = {"source node": self.src_names, "destination slot": self.dst_names}
        return {what: {n: i for i, n in enumerate(ns)} for what, ns in names.items()}

    @functools.cached_property
    def src_layer(self) -> np.ndarray:
        """Layer of each source node; ``input`` is layer -1. [n_src] int32."""
        layers = np.concatenate([[-1], np.repeat(np.arange(self.n_layers), self.n_heads + 1)])
        return _frozen(layers.astype(np.int32))

    @functools.cached_property
    def src_is_mlp(self) -> np.ndarray:
        is_mlp = np.zeros(self.n_src, bool)
        is_mlp[1 + self.n_heads :: self.n_heads + 1] = True
        return _frozen(is_mlp)

    @functools.cached_property
    def dst_layer(self) -> np.ndarray:
        """Layer of each destination slot; ``logits`` is layer n_layers. [n_dst] int32."""
        layers = np.concatenate([np.repeat(np.arange(self.n_layers), self.slots_per_layer), [self.n_layers]])
        return _frozen(layers.astype(np.int32))

    @functools.cached_property
    def dst_kind(self) -> tuple[str, ...]:
        """``"q"``, ``"k"``, ``"v"``, ``"mlp"`` or ``"logits"`` for each destination slot."""
        per_layer = [c for c in _QKV for _ in range(self.n_heads)] + ["mlp"]
        return tuple(per_layer * self.n_layers + ["logits"])

    @functools.cached_property
    def valid(self) -> np.ndarray:
        """[n_src, n_dst] bool: whether source u feeds destination slot v."""
        src_layer = self.src_layer[:, None]
        dst_layer = self.dst_layer[None, :]
        valid = src_layer < dst_layer
        if not self.parallel_attn_mlp:
            dst_is_mlp = np.array([k == "mlp" for k in self.dst_kind])[None, :]
            src_is_head = (~self.src_is_mlp & (self.src_layer >= 0))[:, None]
            valid |= dst_is_mlp & src_is_head & (src_layer == dst_layer)
        return _frozen(valid)

    @functools.cached_property
    def edge_dst(self) -> np.ndarray:
        """[E] int32 destination slot of each edge (edges sorted by destination, then source)."""
        return _frozen(np.nonzero(self.valid.T)[0].astype(np.int32))

    @functools.cached_property
    def edge_src(self) -> np.ndarray:
        """[E] int32 source node of each edge."""
        return _frozen(np.nonzero(self.valid.T)[1].astype(np.int32))

    @functools.cached_property
    def _dense_to_flat(self) -> np.ndarray:
        table = np.full((self.n_src, self.n_dst), -1, np.int64)
        table[self.edge_src, self.edge_dst] = np.arange(self.n_edges)
        return _frozen(table)

    @functools.cached_property
    def edge_names(self) -> tuple[str, ...]:
        src, dst = self.src_names, self.dst_names
        return tuple(f"{src[s]}->{dst[d]}" for s, d in zip(self.edge_src.tolist(), self.edge_dst.tolist(), strict=True))

    @functools.cached_property
    def own_slots(self) -> np.ndarray:
        """[n_src, n_dst] bool: the destination slots through which a node reads its input
        (a head's q/k/v slots, an MLP's slot); ``input`` has none (reference: forward_to_backward)."""
        own = np.zeros((self.n_src, self.n_dst), bool)
        for layer in range(self.n_layers):
            base_src, base_dst = (1 + layer * (self.n_heads + 1), layer * self.slots_per_layer)
            for h in range(self.n_heads):
                own[base_src + h, [base_dst + i * self.n_heads + h for i in range(3)]] = True
            own[base_src + self.n_heads, base_dst + 3 * self.n_heads] = True
        return _frozen(own)

    # ----------------------------------------------------------------------------- conversions
    def to_dense(self, values: Any, fill: float | bool = 0) -> np.ndarray:
        """Flat ``[..., E]`` → dense ``[..., n_src, n_dst]`` (invalid entries get ``fill``)."""
        values = np.asarray(values)
        if values.shape[-1] != self.n_edges:
            raise ValueError(f"expected a last axis of {self.n_edges} edges, got shape {values.shape}")
        dense = np.full(values.shape[:-1] + (self.n_src, self.n_dst), fill, values.dtype)
        dense[..., self.edge_src, self.edge_dst] = values
        return dense

    def to_flat(self, dense: Any) -> Any:
        """Dense ``[..., n_src, n_dst]`` → flat ``[..., E]`` (works on numpy and jax arrays)."""
        if tuple(dense.shape[-2:]) != (self.n_src, self.n_dst):
            raise ValueError(f"expected trailing shape {(self.n_src, self.n_dst)}, got {tuple(dense.shape)}")
        return dense[..., self.edge_src, self.edge_dst]

    # ----------------------------------------------------------------------------- EAP-IG JSON
    def config_dict(self) -> dict[str, Any]:
        """The Graph's fields (the JSON ``cfg``): ``Graph(**config_dict())`` is the same graph."""
        return dataclasses.asdict(self)

    def to_json(
        self,
        path: str | os.PathLike | None = None,
        *,
        scores: Any = None,
        in_graph: Any = None,
        nodes_in_graph: Any = None,
        node_scores: Any = None,
    ) -> dict[str, Any]:
        """Write (and return) the reference library's graph JSON.

        ``scores`` / ``in_graph`` are flat [E] (defaults: 0 and all edges); ``nodes_in_graph``
        [n_src] defaults to the nodes touched by an included edge; ``node_scores`` [n_src] is
        written only when given. ``logits`` is always in the graph, as in the reference.
        """
        scores = np.zeros(self.n_edges, np.float32) if scores is None else self._checked(scores, "scores")
        in_graph = np.ones(self.n_edges, bool) if in_graph is None else self._checked(in_graph, "in_graph").astype(bool)
        if nodes_in_graph is None:
            nodes_in_graph = np.zeros(self.n_src, bool)
            nodes_in_graph[self.edge_src[in_graph]] = True
            nodes_in_graph |= self.own_slots[:, np.unique(self.edge_dst[in_graph])].any(axis=1)
        nodes_in_graph = self._checked(nodes_in_graph, "nodes_in_graph", self.n_src).astype(bool)
        nodes: dict[str, dict[str, Any]] = {
            n: {"in_graph": x} for n, x in zip(self.src_names, nodes_in_graph.tolist(), strict=True)
        }
        if node_scores is not None:
            node_scores = self._checked(node_scores, "node_scores", self.n_src).astype(np.float64)
            for name, score in zip(self.src_names, node_scores.tolist(), strict=True):
                nodes[name]["score"] = score
        nodes["logits"] = {"in_graph": True}
        edges = {
            name: {"score": float(s), "in_graph": bool(g)}
            for name, s, g in zip(self.edge_names, scores.astype(np.float64).tolist(), in_graph.tolist(), strict=True)
        }
        d = {"cfg": self.config_dict(), "nodes": nodes, "edges": edges}
        if path is not None:
            atomic_write_text(path, json.dumps(d))
        return d

    @classmethod
    def from_json(cls, source: str | os.PathLike | dict[str, Any]) -> GraphJSON:
        """Read the reference library's graph JSON (a path or an already-parsed dict)."""
        if isinstance(source, dict):
            d = source
        else:
            with open(source) as f:
                try:
                    d = json.load(f)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}: not valid JSON ({err})") from None
        missing = [k for k in ("cfg", "nodes", "edges") if k not in d]
        if missing:
            raise ValueError(f"graph JSON lacks the key(s) {missing}; expected 'cfg', 'nodes', 'edges'")
        cfg = d["cfg"]
        try:
            graph = cls(
                n_layers=int(cfg["n_layers"]),
                n_heads=int(cfg["n_heads"]),
                parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
                d_model=int(cfg.get("d_model", 0) or 0),
            )
        except KeyError as err:
            raise ValueError(f"graph JSON 'cfg' lacks {err}") from None

        scores = np.zeros(graph.n_edges, np.float32)
        in_graph = np.zeros(graph.n_edges, bool)
        seen = np.zeros(graph.n_edges, bool)
        nodes_in_graph = np.zeros(graph.n_src, bool)
        node_scores = np.full(graph.n_src, np.nan, np.float32)
        any_score = False
        try:  # edge_index / src_index raise a KeyError for a name not in this graph
            for name, info in d["edges"].items():
                e = graph.edge_index(name)
                score = info.get("score")
                scores[e] = np.nan if score is None else float(score)
                in_graph[e] = bool(info.get("in_graph", False))
                seen[e] = True
            if not seen.all():
                raise ValueError(
                    f"graph JSON lists {int(seen.sum())} of the graph's {graph.n_edges} edges; "
                    f"first missing: {graph.edge_names[int(np.argmin(seen))]!r}"
                )
            for name, info in d["nodes"].items():
                if name == "logits":
                    continue
                i = graph.src_index(name)
                info = info if isinstance(info, dict) else {"in_graph": info}
                nodes_in_graph[i] = bool(info.get("in_graph", False))
                if info.get("score") is not None:
                    node_scores[i] = float(info["score"])
                    any_score = True
        except KeyError as err:
            raise ValueError(f"graph JSON: {err.args[0]}") from None
        return GraphJSON(graph, scores, in_graph, nodes_in_graph, node_scores if any_score else None)

    def _checked(self, values: Any, what: str, n: int | None = None) -> np.ndarray:
        """``values`` as an array of shape [n] (default: [E])."""
        values, n = np.asarray(values), (self.n_edges if n is None else n)
        if values.shape != (n,):
            raise ValueError(f"{what} must have shape ({n},), got {values.shape}")
        return values


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
