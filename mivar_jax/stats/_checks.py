"""Input checks and JSON conversion shared by the statistics modules."""

from __future__ import annotations

import dataclasses

import numpy as np

from mivar_jax._checks import check_scores_finite
from mivar_jax._shards import ScoreShards


def as_scores(scores, min_inputs: int = 1, name: str = "scores") -> np.ndarray | ScoreShards:
    """Per-input scores [N, E] as float32, from a Scores or an array; refuses NaN/inf and bad shapes.
    Scores on disk stay there (``ScoreShards``: checked for NaN/inf as they were written)."""
    s = getattr(scores, "per_input", scores)
    s = s if isinstance(s, ScoreShards) else np.asarray(s, np.float32)
    if s.ndim != 2:
        raise ValueError(f"{name} must be per-input scores [N, E], got shape {s.shape}")
    if s.shape[0] < min_inputs or s.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_inputs} inputs and 1 edge, got shape {s.shape}")
    if not isinstance(s, ScoreShards):
        check_scores_finite(s, name)
    return s


def to_json_dict(obj, extra: dict | None = None) -> dict:
    """A dataclass of arrays and scalars as JSON-ready plain lists and numbers (inf/NaN → None)."""
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)} | (extra or {})


def _plain(v):
    if isinstance(v, np.ndarray | np.generic):
        return _plain(v.tolist())
    if dataclasses.is_dataclass(v):
        return to_json_dict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    return v
