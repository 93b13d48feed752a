"""Input checks and JSON conversion shared by the statistics modules."""

from __future__ import annotations

import dataclasses

import numpy as np

from mivar_jax._checks import check_scores_finite


def as_scores(scores, min_inputs: int = 1, name: str = "scores") -> np.ndarray:
    """Per-input scores [N, E] as float32, from a Scores or an array; refuses NaN/inf and bad shapes."""
    per_input = getattr(scores, "per_input", scores)
    s = np.asarray(per_input, np.float32)
    if s.ndim != 2:
        raise ValueError(f"{name} must be per-input scores [N, E], got shape {s.shape}")
    if s.shape[0] < min_inputs or s.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_inputs} inputs and 1 edge, got shape {s.shape}")
    check_scores_finite(s, name)
    return s


def to_json_dict(obj, extra: dict | None = None) -> dict:
    """A dataclass of arrays and scalars as JSON-ready plain lists and numbers (inf/NaN → None)."""

    def plain(v):
        if isinstance(v, np.ndarray | np.generic):
            return v.tolist()
        if dataclasses.is_dataclass(v):
            return to_json_dict(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    d = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    d = _nan_to_none(d)
    if extra:
        d.update(extra)
    return d


def _nan_to_none(v):
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v
