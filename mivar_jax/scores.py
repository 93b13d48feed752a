"""Scores: per-input attribution scores, the central object of the engine (aggregated over inputs
by ``mivar_jax.aggregation.aggregate``)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from mivar_jax._io import atomic_write_bytes
from mivar_jax._shards import ScoreShards
from mivar_jax.graph import Graph

FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False)
class Scores:
    """Per-input scores of every edge (``level="edge"``: [N, E], the Graph's edge order) or node
    (``level="node"``: [N, S], the Graph's source order), with how they were computed.

    Sign: a score estimates metric(patched) − metric(clean) on that input, as the reference library
    reports; a large |score| marks an important component. ``clean_metric`` [N] is the full model's
    metric per input; ``uid`` [N] identifies the inputs (TaskData.uid). ``per_input`` is an array,
    or ``ScoreShards`` on disk for scores larger than memory (``attribute(scores_dir=…)``).
    """

    per_input: np.ndarray | ScoreShards
    graph: Graph
    level: str
    method: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    clean_metric: np.ndarray | None = None
    uid: np.ndarray | None = None

    def __post_init__(self):
        if not isinstance(self.per_input, ScoreShards):
            self.per_input = np.asarray(self.per_input, np.float32)
        if self.level not in ("edge", "node"):
            raise ValueError(f"level must be 'edge' or 'node', got {self.level!r}")
        if self.per_input.ndim != 2 or self.per_input.shape[1] != self.n_items:
            raise ValueError(
                f"per_input must be [N, {self.n_items}] for level {self.level!r}, got {self.per_input.shape}"
            )

    @property
    def n_inputs(self) -> int:
        return int(self.per_input.shape[0])

    @property
    def n_items(self) -> int:
        return self.graph.n_edges if self.level == "edge" else self.graph.n_src

    @property
    def names(self) -> tuple[str, ...]:
        return self.graph.edge_names if self.level == "edge" else self.graph.src_names

    def __getitem__(self, rows) -> Scores:
        """The scores of some inputs (an index array, slice or boolean mask)."""
        rows = np.atleast_1d(np.arange(self.n_inputs)[rows])
        return dataclasses.replace(
            self,
            per_input=self.per_input[rows],
            clean_metric=None if self.clean_metric is None else self.clean_metric[rows],
            uid=None if self.uid is None else self.uid[rows],
        )

    def to_graph_json(self, path: str | os.PathLike | None = None, how: str = "mean", in_graph: Any = None) -> dict:
        """The reference library's graph JSON with aggregated scores (node scores at node level)."""
        from mivar_jax.aggregation import aggregate  # aggregation imports this module

        agg = np.asarray(aggregate(self, how))
        if self.level == "edge":
            return self.graph.to_json(path, scores=agg, in_graph=in_graph)
        return self.graph.to_json(path, node_scores=agg, in_graph=in_graph)

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file: the arrays, with graph / method / parameters as metadata. Scores on
        disk stay in their shards; the file then lists them (paths relative to it) and the inputs of
        this view, so keep the shards beside it."""
        from safetensors.numpy import save

        on_disk = isinstance(self.per_input, ScoreShards)
        tensors = (
            {"view_rows": self.per_input._rows} if on_disk else {"per_input": np.ascontiguousarray(self.per_input)}
        )
        if self.clean_metric is not None:
            tensors["clean_metric"] = np.asarray(self.clean_metric, np.float32)
        if self.uid is not None:
            tensors["uid"] = np.asarray(self.uid, np.int64)
        meta = {
            "format_version": FORMAT_VERSION,
            "graph": self.graph.config_dict(),
            "level": self.level,
            "method": self.method,
            "params": self.params,
        }
        if on_disk:
            here = os.path.dirname(os.path.abspath(path))
            files = [os.path.relpath(f, here).replace(os.sep, "/") for f in self.per_input.files]
            meta["shards"] = {"files": files, "budget": self.per_input.budget}
        atomic_write_bytes(path, save(tensors, metadata={"mivar_jax": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {})["mivar_jax"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except KeyError:
            raise ValueError(f"{path}: not a mivar_jax Scores file") from None
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path}: not a readable Scores file ({err})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: Scores format {meta.get('format_version')}, this version reads {FORMAT_VERSION}")
        graph, per_input = Graph(**meta["graph"]), tensors.get("per_input")
        if "shards" in meta:
            here, shards = os.path.dirname(os.path.abspath(path)), meta["shards"]
            files = [os.path.join(here, f) for f in shards["files"]]
            if missing := [f for f in files if not os.path.exists(f)]:
                raise ValueError(
                    f"{path}: {len(missing)} of its {len(files)} score shards are missing, e.g. {missing[0]}"
                )
            n_items = graph.n_edges if meta["level"] == "edge" else graph.n_src
            per_input = ScoreShards(files, n_items, shards["budget"], rows=tensors["view_rows"])
        return cls(
            per_input,
            graph,
            meta["level"],
            meta["method"],
            meta["params"],
            tensors.get("clean_metric"),
            tensors.get("uid"),
        )

    def __repr__(self) -> str:
        return f"Scores({self.method!r}, level={self.level}, inputs={self.n_inputs}, items={self.n_items}, params={self.params})"
