"""Variance decomposition of study results over the factors of a perturbation grid.

``values`` is an array whose leading axes are the factors (dataset seed, template family,
estimator, …; a balanced, complete grid) and whose trailing axes, if any, are items (edges of
aggregated scores or of membership indicators) that are decomposed one by one and summed.

**Crossed factors** (every level of each factor meets every level of the others), random-effects
ANOVA. For each subset T of the k factors, the effect is the Möbius inversion of the marginal
means, α_T = Σ_{U⊆T} (−1)^{|T|−|U|} ȳ_U (ȳ_U: the mean over the factors not in U), and

    SS_T = (Π_{j∉T} n_j) Σ α_T²,   df_T = Π_{j∈T} (n_j − 1),   MS_T = SS_T / df_T,
    Σ_T SS_T = Σ (y − ȳ)²  (exact: the balanced design makes the effects orthogonal).

With one observation per cell, the highest interaction doubles as the residual. Expected mean
squares E[MS_T] = Σ_{U⊇T} (Π_{j∉U} n_j) σ²_U give the variance components by inversion,

    σ²_T = (1 / Π_{j∉T} n_j) Σ_{U⊇T} (−1)^{|U|−|T|} MS_U,

reported clipped at 0 (``components``) and unclipped (``raw_components``); ``share`` is each
component over their sum and ``ss_share`` each SS over the total SS (summing to 1 exactly).

**Nested factors** (each level of factor j+1 exists only within one level of factor j, e.g.
bootstrap replicates within dataset seeds), law of total variance with population variances:

    Var(y) = Var(E[y | f₁]) + E[Var(E[y | f₁, f₂] | f₁)] + … + E[Var(y | f₁, …, f_k−1)],

one term per level (the last axis is the within-cell residual). Random-effects components come
from the nested EMS: σ²_j = (MS_j − MS_{j+1}) / (Π_{i>j} n_i), σ²_last = MS_last.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from mivar_jax.stats._checks import to_json_dict

DESIGNS = ("crossed", "nested")


@dataclasses.dataclass(frozen=True)
class Decomposition:
    design: str
    factors: tuple[str, ...]
    levels: tuple[int, ...]
    effects: tuple[str, ...]  # "seed", "seed×family", …
    sum_of_squares: np.ndarray
    df: np.ndarray
    mean_squares: np.ndarray
    raw_components: np.ndarray
    components: np.ndarray
    share: np.ndarray
    ss_share: np.ndarray
    total_ss: float
    n_items: int

    def table(self) -> list[dict]:
        return [
            {"effect": e, "df": int(d), "ss": float(ss), "ms": float(ms), "component": float(c), "share": float(s),
             "ss_share": float(q)}
            for e, d, ss, ms, c, s, q in zip(self.effects, self.df, self.sum_of_squares, self.mean_squares,
                                             self.components, self.share, self.ss_share, strict=True)
        ]  # fmt: skip

    def to_json(self) -> dict:
        return to_json_dict(self, extra={"table": self.table()})


def _check(values, factors, design):
    y = np.asarray(values, np.float64)
    factors = tuple(factors)
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {list(DESIGNS)}")
    if not factors or len(set(factors)) != len(factors):
        raise ValueError(f"factors must be distinct names, got {factors}")
    if y.ndim < len(factors):
        raise ValueError(f"values have {y.ndim} axes, fewer than the {len(factors)} factors {factors}")
    levels = y.shape[: len(factors)]
    if min(levels) < 2:
        raise ValueError(f"every factor needs ≥ 2 levels, got {dict(zip(factors, levels, strict=True))}")
    if not np.isfinite(y).all():
        raise ValueError("values must be finite and complete (a balanced grid: no NaN, no missing cells)")
    return y.reshape(levels + (-1,)), factors, tuple(int(n) for n in levels)


def _subsets(items) -> list[tuple[int, ...]]:
    """Every subset of ``items`` as a tuple, by size, then in ``itertools.combinations`` order."""
    return [u for r in range(len(items) + 1) for u in itertools.combinations(items, r)]


def decompose(values, factors: Sequence[str], design: str = "crossed") -> Decomposition:
    """Decompose the variance of ``values`` [*levels, *items] over ``factors`` (module docstring)."""
    y, factors, levels = _check(values, factors, design)
    k = len(factors)
    n_items = y.shape[-1]
    total_ss = float(((y - y.mean(axis=tuple(range(k)), keepdims=True)) ** 2).sum())
    if design == "crossed":
        subsets = _subsets(range(k))[1:]  # the effects: every non-empty subset of the factors
        marg = {u: y.mean(axis=tuple(i for i in range(k) if i not in u), keepdims=True) for u in _subsets(range(k))}
        ss, df = [], []
        for t in subsets:
            effect = sum((-1) ** (len(t) - len(u)) * marg[u] for u in _subsets(t))
            ss.append(float((np.broadcast_to(effect, y.shape) ** 2).sum()))
            df.append(int(np.prod([levels[i] - 1 for i in t])))
        ss, df = np.array(ss), np.array(df, np.int64)
        ms = ss / df

        def component(t):  # σ²_T = Σ_{U⊇T} (−1)^{|U|−|T|} MS_U / Π_{j∉T} n_j
            ms_sum = sum((-1) ** (len(u) - len(t)) * ms[subsets.index(u)] for u in subsets if set(t) <= set(u))
            return ms_sum / np.prod([levels[i] for i in range(k) if i not in t])

        raw = np.array([component(t) for t in subsets])
        names = tuple("×".join(factors[i] for i in t) for t in subsets)
    else:
        # nested: term j = variation of the level-j cell means within their level-(j−1) cells
        ss, df = [], []
        for j in range(k):
            coarse = y.mean(axis=tuple(range(j, k)), keepdims=True)
            fine = y.mean(axis=tuple(range(j + 1, k)), keepdims=True) if j + 1 < k else y
            rest = int(np.prod(levels[j + 1 :]))
            ss.append(rest * float(((fine - coarse) ** 2).sum()))
            df.append(int(np.prod(levels[:j])) * (levels[j] - 1))
        ss, df = np.array(ss), np.array(df, np.int64)
        ms = ss / df
        raw = np.array([(ms[j] - (ms[j + 1] if j + 1 < k else 0.0)) / np.prod(levels[j + 1 :]) for j in range(k)])
        names = tuple(f"{factors[j]}" if j == 0 else f"{factors[j]}({factors[j - 1]})" for j in range(k))
    comp = np.maximum(raw, 0.0)
    total_comp = comp.sum()
    return Decomposition(
        design=design,
        factors=factors,
        levels=levels,
        effects=names,
        sum_of_squares=ss,
        df=df,
        mean_squares=ms,
        raw_components=raw,
        components=comp,
        share=comp / total_comp if total_comp > 0 else np.zeros_like(comp),
        ss_share=ss / total_ss if total_ss > 0 else np.zeros_like(ss),
        total_ss=total_ss,
        n_items=n_items,
    )
