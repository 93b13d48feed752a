"""Confidence intervals for MIB's CPR and CMD (``evaluation.evaluate_curve``), by bootstrap over inputs.

The circuits of the curve are held fixed; the inputs they are evaluated on are resampled. A
replicate with input counts w [N] has faithfulness f_c(w) = Σ w (m_c − m_∅) / Σ w (m_full − m_∅)
per circuit c (MIB's ratio of means over the resampled inputs), and CPR(w), CMD(w) are the
trapezoidal areas of ``evaluation.curve_areas`` over those f_c. Intervals: percentile and BCa
(``stats.intervals``; jackknife by leaving one input out). With ``other`` (a second curve on the
same inputs, e.g. another estimator's), the same replicates give paired intervals for the
differences CPR − CPR_other and CMD − CMD_other: the comparison of two methods with an interval.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mivar_jax._checks import check_int, check_key
from mivar_jax.evaluation import CurveResult, curve_areas
from mivar_jax.stats.intervals import bca_interval, percentile_interval


@dataclasses.dataclass(frozen=True)
class CurveIntervals:
    """Point values and intervals of ``names`` (cpr, cmd, and the paired differences with ``other``)."""

    names: tuple[str, ...]
    value: np.ndarray  # [M]
    percentile: np.ndarray  # [2, M]
    bca: np.ndarray  # [2, M]
    n_inputs: int
    n_resamples: int
    confidence: float

    def summary(self) -> dict:
        return {
            name: {
                "value": float(self.value[i]),
                "ci_percentile": [float(x) for x in self.percentile[:, i]],
                "ci_bca": [float(x) for x in self.bca[:, i]],
            }
            for i, name in enumerate(self.names)
        } | {"n_inputs": self.n_inputs, "n_resamples": self.n_resamples, "confidence": self.confidence}


def _areas(curve: CurveResult, w_RxN: np.ndarray, log_scale: bool) -> np.ndarray:
    """[R, 2] (CPR, CMD) of each weighting of the inputs."""
    ev = curve.evaluation
    gain = w_RxN @ (np.atleast_2d(ev.metric) - ev.empty_metric).T.astype(np.float64)  # [R, C]
    span = w_RxN @ (ev.full_metric - ev.empty_metric).astype(np.float64)  # [R]
    faith = gain / span[:, None]
    return np.array([curve_areas(curve.fractions, f, log_scale) for f in faith])


def curve_intervals(
    curve: CurveResult,
    *,
    key: jax.Array,
    other: CurveResult | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    log_scale: bool = False,
) -> CurveIntervals:
    """Bootstrap intervals of CPR and CMD over inputs (module docstring); ``log_scale`` as the
    curve was integrated. The same ``key`` gives the same intervals."""
    key = check_key(key)
    R = check_int(n_resamples, "n_resamples", low=2)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    N = curve.evaluation.full_metric.shape[-1]
    if N < 2:
        raise ValueError("intervals over inputs need at least 2 inputs")
    if other is not None and not np.array_equal(other.evaluation.full_metric, curve.evaluation.full_metric):
        raise ValueError("other must be evaluated on the same inputs (its full-model metrics differ)")
    draws = np.asarray(jax.random.randint(key, (R, N), 0, N))
    w_RxN = np.zeros((R, N))
    np.add.at(w_RxN, (np.arange(R)[:, None], draws), 1.0)
    loo_NxN = 1.0 - np.eye(N)
    curves = [curve] if other is None else [curve, other]
    star, hat, jack = (
        np.concatenate([_areas(c, w, log_scale) for c in curves], axis=1) for w in (w_RxN, np.ones((1, N)), loo_NxN)
    )
    if not np.allclose(hat[0, :2], [curve.cpr, curve.cmd], rtol=1e-4, atol=1e-6, equal_nan=True):  # float32 means
        raise ValueError(f"the curve's CPR/CMD were not integrated with log_scale={log_scale}")
    names = ("cpr", "cmd")
    if other is not None:  # (cpr, cmd, cpr_other, cmd_other) → (cpr, cmd, cpr − other, cmd − other)
        star, hat, jack = (np.concatenate([x[:, :2], x[:, :2] - x[:, 2:]], axis=1) for x in (star, hat, jack))
        names += ("cpr_difference", "cmd_difference")
    return CurveIntervals(
        names=names,
        value=hat[0],
        percentile=np.asarray(percentile_interval(star, confidence), np.float64),
        bca=np.asarray(bca_interval(star, hat[0], jack, confidence), np.float64),
        n_inputs=N,
        n_resamples=R,
        confidence=confidence,
    )
