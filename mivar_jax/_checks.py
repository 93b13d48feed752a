"""Argument checks shared by the public entry points: one message style, naming the argument."""

from __future__ import annotations

import jax
import numpy as np


def check_int(value, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (bools and floats refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"in [{low}, {high}]" if high is not None else f"≥ {low}"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def check_key(key, name: str = "key") -> jax.Array:
    """A PRNG key: ``jax.random.key(seed)`` (or a legacy ``jax.random.PRNGKey(seed)``)."""
    if key is None:
        raise ValueError(f"{name} is required: pass {name}=jax.random.key(seed)")
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
    raise ValueError(f"{name} must be a PRNG key, jax.random.key(seed); got {type(key).__name__} {key!r}")


def check_scores_finite(values: np.ndarray, name: str = "scores", allow_unscored: bool = False) -> None:
    """Refuse NaN/inf in scores ([N, E] per input or [E] aggregated), naming the first one.

    ``allow_unscored``: edges whose scores are NaN for every input (left unscored, e.g. by an exact
    run on a subset) are accepted; a NaN among finite values, or ±inf anywhere, never is."""
    v = np.asarray(values)
    bad = ~np.isfinite(v)
    if allow_unscored:
        unscored = np.isnan(v).all(axis=0) if v.ndim == 2 else np.isnan(v)
        bad &= ~unscored
    if not bad.any():
        return
    where = np.argwhere(bad)[0]
    at = f"input {int(where[0])}, edge {int(where[1])}" if v.ndim == 2 else f"edge {int(where[0])}"
    unscored_note = " (edges unscored for every input are allowed here)" if allow_unscored else ""
    raise ValueError(
        f"{name} holds {int(bad.sum())} NaN/inf values (e.g. {at}: {v[tuple(where)]}){unscored_note}; "
        "circuits and statistics need finite scores (score the missing edges, or drop them)"
    )


def mib(n_bytes: float) -> str:
    """A byte count for messages, with enough precision to compare two of them: '0.954 MiB'."""
    return f"{n_bytes / 2**20:.3g} MiB"
