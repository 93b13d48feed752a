"""Stability at fixed faithfulness: compare circuits that do the same job, not circuits of one size.

Faithfulness grows with circuit size, so the stability of top-n circuits of one size mixes how
stable a method is with how faithful its circuits are. Given B replicate score vectors (e.g. a
bootstrap's ``aggregated``), each replicate's pruned top-n circuit at every size n of a grid, and
the faithfulness f[b, s] of each (``mv.evaluate``), for a target f*:

- ``chosen[b]``: the smallest grid size whose circuit reaches f[b, s] ≥ f* (−1 when none does);
- ``sizes``: the edges of each chosen circuit (after pruning); their median and the central
  ``confidence`` range over the replicates that reached the target;
- ``mean_jaccard``: the mean pairwise Jaccard of the chosen circuits (replicates that reached the
  target; at least two are needed), with the Monte-Carlo interval over replicates of
  ``stats.bootstrap`` (resampling replicates; it says how precisely the B replicates pin the mean);
- the frontier: for every grid size, the mean faithfulness of the B circuits and their mean pairwise
  Jaccard — stability against achieved faithfulness.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mivar_jax._checks import check_key
from mivar_jax.stats.bootstrap import _jaccard_intervals, jaccard_matrix, mean_pairs


@dataclasses.dataclass(frozen=True)
class FaithfulStability:
    target: float
    grid: np.ndarray  # [S] requested top-n sizes
    chosen: np.ndarray  # [B] grid index of each replicate's smallest circuit reaching the target; −1: none
    sizes: np.ndarray  # [B] edges of the chosen circuits (−1: none)
    n_reached: int
    size_median: float | None
    size_range: list[float] | None  # central `confidence` range of the chosen sizes
    mean_jaccard: float | None
    jaccard_mc: list[float] | None  # Monte-Carlo interval over the replicates
    frontier_faithfulness: np.ndarray  # [S] mean over replicates
    frontier_jaccard: np.ndarray  # [S] mean pairwise Jaccard of the replicates' circuits
    confidence: float

    @property
    def reading(self) -> str:
        B = self.chosen.size
        if self.n_reached < 2:
            return (
                f"{self.n_reached} of {B} replicate circuits reach faithfulness {self.target} within "
                f"{int(self.grid[-1])} edges: no stability to report (try larger sizes)"
            )
        lo, hi = self.jaccard_mc
        return (
            f"the smallest circuit reaching faithfulness {self.target} has {self.size_median:.0f} edges "
            f"(median over {self.n_reached} of {B} replicates; range {self.size_range[0]:.0f}–"
            f"{self.size_range[1]:.0f}); those circuits agree with mean Jaccard {self.mean_jaccard:.3f} "
            f"[{lo:.3f}, {hi:.3f}]"
        )

    def summary(self) -> dict:
        return {
            "target": self.target,
            "n_replicates": int(self.chosen.size),
            "n_reached": self.n_reached,
            "size_median": self.size_median,
            "size_range": self.size_range,
            "mean_jaccard": self.mean_jaccard,
            "jaccard_mc": self.jaccard_mc,
            "grid": self.grid.tolist(),
            "frontier_faithfulness": self.frontier_faithfulness.tolist(),
            "frontier_jaccard": self.frontier_jaccard.tolist(),
            "confidence": self.confidence,
            "reading": self.reading,
        }


def faithful_stability(
    circuits_BxSxE, faithfulness_BxS, grid, target: float, *, key: jax.Array, confidence: float = 0.95
) -> FaithfulStability:
    """Stability of the smallest circuits reaching faithfulness ``target`` (module docstring):
    ``circuits`` [B, S, E] bool (replicate b's pruned circuit at grid size s), ``faithfulness`` [B, S]."""
    key = check_key(key)
    c = np.asarray(circuits_BxSxE, bool)
    f = np.asarray(faithfulness_BxS, np.float64)
    grid = np.asarray(grid)
    if c.ndim != 3 or f.shape != c.shape[:2] or grid.shape != (c.shape[1],):
        raise ValueError(
            f"circuits [B, S, E], faithfulness [B, S] and grid [S] disagree: {c.shape}, {f.shape}, {grid.shape}"
        )
    if c.shape[0] < 2:
        raise ValueError("stability needs at least two replicates")
    if np.any(np.diff(grid) <= 0):
        raise ValueError(
            f"grid sizes must increase (the first reaching the target is the smallest), got {grid.tolist()}"
        )
    if not 0 < target <= 1 or not 0 < confidence < 1:
        raise ValueError(f"target must lie in (0, 1] and confidence in (0, 1), got {target}, {confidence}")
    B = c.shape[0]
    reached_BxS = f >= target  # NaN faithfulness never reaches
    chosen = np.where(reached_BxS.any(1), reached_BxS.argmax(1), -1)
    ok = chosen >= 0
    picked = c[np.arange(B), np.maximum(chosen, 0)]  # [B, E]
    sizes = np.where(ok, picked.sum(1), -1)
    n = int(ok.sum())
    median = size_range = mean = interval = None
    if n:
        tail = (1 - confidence) / 2 * 100
        median = float(np.median(sizes[ok]))
        size_range = [float(x) for x in np.percentile(sizes[ok], [tail, 100 - tail])]
    if n >= 2:
        j = jaccard_matrix(picked[ok])
        theta, pct, _ = _jaccard_intervals(key, j, j, confidence=confidence)
        mean, interval = float(theta[0]), [float(pct[0, 0]), float(pct[1, 0])]
    frontier_j = np.array([mean_pairs(jaccard_matrix(c[:, s])) for s in range(c.shape[1])])
    return FaithfulStability(
        target=float(target),
        grid=grid,
        chosen=chosen,
        sizes=sizes,
        n_reached=n,
        size_median=median,
        size_range=size_range,
        mean_jaccard=mean,
        jaccard_mc=interval,
        frontier_faithfulness=np.nanmean(f, axis=0),
        frontier_jaccard=frontier_j,
        confidence=confidence,
    )
