"""How many prompts are enough: the bootstrap's mean Jaccard as a function of the dataset size.

For each size m of a grid (default N/4 … 4N in factors of two), B m-out-of-N bootstrap replicates (``stats.bootstrap(n_draws=m)``: m
prompts drawn with replacement from the N observed ones) give the mean pairwise Jaccard J(m) of
their pruned top-n circuits, with its Monte-Carlo interval over the replicates. Sizes above N are
allowed: the observed prompts then stand for the population they were drawn from (the bootstrap's
plug-in principle), so J(m) estimates the stability of a study run on m fresh prompts of the same
kind. The estimate reads where J crosses the target (the paper's bar 0.8):

- ``n_needed``: the smallest m at which J(m) reaches the target and stays there over the rest of the
  grid, interpolated linearly in log m from the last grid size below the target; None when the
  largest size is still below (more than ``sizes[-1]`` prompts are needed);
- its interval: the same crossing for the upper and for the lower Monte-Carlo bound of J(m).

The interval covers the replicates' Monte-Carlo error, not the error of taking the observed prompts
as the population: with few prompts, edges whose mean sits near the cut make the plug-in curve
optimistic or pessimistic. tests/test_stats_selection.py checks the estimate against the true curve
of a planted population.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mivar_jax._checks import check_key
from mivar_jax.stats._checks import as_scores
from mivar_jax.stats.bootstrap import STABLE_JACCARD, bootstrap


@dataclasses.dataclass(frozen=True)
class PromptsNeeded:
    n_edges: int
    n_inputs: int
    target: float
    sizes: np.ndarray  # [S] prompts per replicate
    mean_jaccard: np.ndarray  # [S]
    jaccard_low: np.ndarray  # [S] Monte-Carlo interval of each mean
    jaccard_high: np.ndarray  # [S]
    n_needed: float | None
    n_needed_low: float | None
    n_needed_high: float | None  # None: beyond the grid

    @property
    def reading(self) -> str:
        def words(v):
            return f"more than {int(self.sizes[-1])}" if v is None else f"{v:.0f}"

        head = f"to call this top-{self.n_edges} circuit stable (mean Jaccard ≥ {self.target})"
        if self.n_needed is None:
            return f"{head} you need more than {int(self.sizes[-1])} prompts (the largest size tried)"
        if np.all(self.mean_jaccard >= self.target):
            return f"{head} {int(self.sizes[0])} prompts are enough (the smallest size tried); this dataset has {self.n_inputs}"
        return (
            f"{head} you need about {self.n_needed:.0f} prompts (Monte-Carlo interval "
            f"{words(self.n_needed_low)} – {words(self.n_needed_high)}); this dataset has {self.n_inputs}"
        )

    def summary(self) -> dict:
        return {
            "n_edges": self.n_edges,
            "n_inputs": self.n_inputs,
            "target": self.target,
            "sizes": self.sizes.tolist(),
            "mean_jaccard": self.mean_jaccard.tolist(),
            "jaccard_low": self.jaccard_low.tolist(),
            "jaccard_high": self.jaccard_high.tolist(),
            "n_needed": self.n_needed,
            "n_needed_low": self.n_needed_low,
            "n_needed_high": self.n_needed_high,
            "reading": self.reading,
        }


def default_sizes(n_inputs: int) -> np.ndarray:
    """N/4 … 4N in factors of two (at least 2 prompts), distinct."""
    return np.unique(np.maximum(2, np.round(n_inputs * 2.0 ** np.arange(-2, 3)).astype(np.int64)))


def crossing(sizes: np.ndarray, curve: np.ndarray, target: float) -> float | None:
    """The size where ``curve`` reaches ``target`` for good (module docstring); None if it does not."""
    below = np.flatnonzero(curve < target)
    if below.size == 0:
        return float(sizes[0])
    i = int(below[-1])
    if i == len(sizes) - 1:
        return None
    x0, x1, y0, y1 = np.log(sizes[i]), np.log(sizes[i + 1]), curve[i], curve[i + 1]
    return float(np.exp(x0 + (target - y0) / (y1 - y0) * (x1 - x0)))


def prompts_needed(
    scores,
    n_edges: int,
    *,
    key: jax.Array,
    graph=None,
    sizes=None,
    n_replicates: int = 100,
    target: float = STABLE_JACCARD,
    aggregation: str = "mean",
    confidence: float = 0.95,
) -> PromptsNeeded:
    """J(m) over ``sizes`` (default ``default_sizes(N)``) and the prompts needed to reach ``target``
    (module docstring); ``scores`` and ``graph`` as for ``stats.bootstrap``."""
    key = check_key(key)
    N = as_scores(scores, min_inputs=2).shape[0]
    sizes = default_sizes(N) if sizes is None else np.asarray(sizes, np.int64)
    if sizes.ndim != 1 or sizes.size < 2 or np.any(np.diff(sizes) <= 0) or sizes[0] < 2:
        raise ValueError(f"sizes must be at least two increasing prompt counts ≥ 2, got {sizes.tolist()}")
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    rows = []
    for i, m in enumerate(sizes):
        b = bootstrap(
            scores, n_replicates, n_edges, aggregation=aggregation, key=jax.random.fold_in(key, i),
            graph=graph, confidence=confidence, n_draws=int(m),
        )  # fmt: skip
        rows.append((b.mean_jaccard, *b.jaccard_ci_percentile["mean_jaccard"]))
    mean, low, high = (np.array(c) for c in zip(*rows, strict=True))
    return PromptsNeeded(
        n_edges=int(n_edges),
        n_inputs=N,
        target=float(target),
        sizes=sizes,
        mean_jaccard=mean,
        jaccard_low=low,
        jaccard_high=high,
        n_needed=crossing(sizes, mean, target),
        n_needed_low=crossing(sizes, high, target),
        n_needed_high=crossing(sizes, low, target),
    )
