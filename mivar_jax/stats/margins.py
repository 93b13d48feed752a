"""Scoring variance against selection variance: how far each edge sits from the top-n cut.

From a bootstrap (``stats.bootstrap``: B replicates of the aggregated scores, ranked by |score|),
for the cut of the top-n circuit *before pruning* (pruning is a fixed function of the cut):

- the cut c: halfway between the n-th and (n+1)-th largest |θ̂_e| of the full-data aggregate θ̂;
- ``score_se`` [E]: the bootstrap standard error of |θ| per edge (std over replicates, ddof 1);
- ``margin`` z_e = (|θ̂_e| − c) / se_e, the edge's distance to the cut in standard errors (±∞ for
  an edge whose |θ| never moves and is not at the cut; 0 for an edge exactly at the cut: a tie);
- ``implied_inclusion`` p_e = Φ(z_e): the chance a replicate keeps e if its |θ| were normal
  around |θ̂_e| with sd se_e and the cut stood still; ``observed_inclusion`` f_e: the share of
  replicates whose top-n holds e;
- ``implied_jaccard`` = Σ p² / Σ (2p − p²): expected intersection over expected union of two
  independent replicate circuits with inclusion chances p (edges independent); ``observed_jaccard``:
  the mean pairwise Jaccard of the replicates' unpruned top-n sets;
- ``relative_se``: median se_e / |θ̂_e| over the full-data top-n: how noisy the scores themselves are;
  ``score_correlation``: mean Pearson correlation of the aggregated score vectors of two
  replicates (all edges): their stability before any cut;
- ``contested``: edges with |z_e| < z_(1+confidence)/2, those the scores cannot place on one side of
  the cut; ``contested_share``: their share Σ_contested f(1 − f) / Σ f(1 − f) of the expected
  disagreement between two replicates (each edge contributes 2 f (1 − f) to the expected symmetric
  difference; NaN when no edge ever changes side).

Reading: noisy scores far from the cut (large ``relative_se``, no contested edge) leave the circuit
stable; precise scores crowded at the cut (small ``relative_se``, high ``contested_share``) make it
unstable: the instability is the cut's. An observed Jaccard well above the implied one with edges
at margin 0 means ties at the cut, broken the same way in every replicate (``cut_ties``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import ndtr, ndtri

from mivar_jax.circuits.selection import topn
from mivar_jax.stats._checks import to_json_dict
from mivar_jax.stats.bootstrap import BootstrapResult, jaccard_matrix, mean_pairs


@dataclasses.dataclass(frozen=True)
class SelectionNoise:
    n_edges: int
    cut: float
    score_se: np.ndarray  # [E]
    margin: np.ndarray  # [E]
    implied_inclusion: np.ndarray  # [E]
    observed_inclusion: np.ndarray  # [E]
    implied_jaccard: float
    observed_jaccard: float
    relative_se: float
    score_correlation: float
    n_contested: int
    contested_share: float
    confidence: float

    def summary(self) -> dict:
        keep = ("n_edges", "cut", "implied_jaccard", "observed_jaccard", "relative_se", "score_correlation")
        return {k: getattr(self, k) for k in keep} | {
            "n_contested": self.n_contested,
            "contested_share": self.contested_share,
            "confidence": self.confidence,
            "reading": self.reading,
        }

    @property
    def reading(self) -> str:
        """One sentence on where the instability comes from."""
        share = "no edge changes side" if np.isnan(self.contested_share) else f"{self.contested_share:.0%}"
        where = (
            f"{self.n_contested} edges lie within the {self.confidence:.0%} band of the top-{self.n_edges} cut "
            f"(share of the replicate-to-replicate disagreement they carry: {share})"
        )
        scores = f"aggregated scores vary by {self.relative_se:.1%} (median relative SE of the circuit's edges)"
        return (
            f"{scores}; {where}; Jaccard implied by the margins {self.implied_jaccard:.3f}, observed "
            f"{self.observed_jaccard:.3f} (unpruned top-{self.n_edges})"
        )

    def to_json(self, arrays: bool = False) -> dict:
        d = self.summary()
        return d | ({k: v for k, v in to_json_dict(self).items() if k not in d} if arrays else {})


def _expected_jaccard(p_E: np.ndarray) -> float:
    union = (2 * p_E - p_E**2).sum()
    return float((p_E**2).sum() / union) if union > 0 else 1.0


def selection_noise(boot: BootstrapResult, confidence: float = 0.95) -> SelectionNoise:
    """Margins to the top-n cut and the Jaccard they imply, from a bootstrap (module docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = boot.n_edges
    mag_BxE = np.abs(boot.aggregated.astype(np.float64))
    theta_E = np.abs(boot.full_aggregate.astype(np.float64))
    E = theta_E.size
    desc = np.sort(theta_E)[::-1]
    cut = float((desc[n - 1] + desc[n]) / 2) if n < E else -np.inf
    se_E = mag_BxE.std(0, ddof=1)
    gap_E = theta_E - cut
    with np.errstate(divide="ignore", invalid="ignore"):
        z_E = np.where(se_E > 0, gap_E / se_E, np.sign(gap_E) * np.inf)
    z_E = np.where(gap_E == 0, 0.0, z_E)
    p_E = ndtr(z_E)

    masks_BxE = np.asarray(topn(boot.aggregated, n)[0])
    f_E = masks_BxE.mean(0)
    observed = mean_pairs(jaccard_matrix(masks_BxE))

    top_E = theta_E >= desc[n - 1]  # the full-data top-n (and any edge tied with its n-th)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_se = float(np.median(se_E[top_E] / theta_E[top_E]))

    centred = boot.aggregated.astype(np.float64) - boot.aggregated.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    unit = centred / np.where(norms > 0, norms, 1)[:, None]
    corr = unit @ unit.T
    corr[np.outer(norms, norms) == 0] = 1.0  # a constant replicate: identical scores up to a shift
    score_correlation = mean_pairs(corr)

    contested = np.abs(z_E) < ndtri((1 + confidence) / 2)
    flips = f_E * (1 - f_E)
    share = float(flips[contested].sum() / flips.sum()) if flips.sum() > 0 else float("nan")
    return SelectionNoise(
        n_edges=n,
        cut=cut,
        score_se=se_E,
        margin=z_E,
        implied_inclusion=p_E,
        observed_inclusion=f_E,
        implied_jaccard=_expected_jaccard(p_E),
        observed_jaccard=observed,
        relative_se=relative_se,
        score_correlation=score_correlation,
        n_contested=int(contested.sum()),
        contested_share=share,
        confidence=confidence,
    )
