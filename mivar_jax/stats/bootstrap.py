"""Bootstrap of circuit discovery: how much the pruned top-n circuit moves when the data move.

Each replicate b reweights the N inputs with weights w_b [N] drawn inside jit from
``fold_in(key, b)`` (so results do not depend on chunking or on the number of devices):

- ``multinomial``: N draws with replacement (w = counts), the classical bootstrap; ``n_draws`` = m
  makes it the m-out-of-N bootstrap (m draws: the stability of a dataset of m prompts like these);
- ``subsample``: ⌊fraction·N⌋ inputs without replacement (w ∈ {0, 1});
- ``disjoint-splits``: one permutation split into B disjoint parts of ⌊N/B⌋ inputs (the
  follow-up paper's protocol: k non-overlapping subsets, all pairwise Jaccards).

Per replicate: the weighted aggregate [E] (``mivar_jax.aggregation``: mean as one matmul W·S,
exact on a fixed-point grid, so the same bits whatever the chunking, device count or CPU), its
top-n edges by |score| (ties → lower index; the edges tied with the n-th but left out are
counted, ``cut_ties``), pruned (``circuits.pruning``). Then, from the B × B Jaccard matrices of
edge sets and node sets (one matmul of the masks each):

- ``mean_jaccard``: mean over pairs b ≠ b'; ``jaccard_cv``: std / mean of those pairs;
- ``jaccard_to_full`` / ``jaccard_to_majority``: each replicate against the full-data circuit
  and against the majority circuit (edges in ≥ 50% of replicates, not re-pruned);
- ``inclusion_frequency`` [E], circuit ``sizes`` (edges after pruning) and ``node_sizes``;
- intervals (``stats.intervals``) for the aggregated edge scores: percentile and BCa (jackknife
  in closed form for every aggregation) for ``multinomial``; for ``subsample`` the percentile
  deviations rescaled by √(m/(N − m)) (m = ⌊fraction·N⌋: a subsample mean without replacement
  varies √((N − m)/m) times as much as the full-data mean's bootstrap); none for
  ``disjoint-splits`` (B values of parts of N/B inputs say little about the full-data score);
- Monte-Carlo intervals for the Jaccard statistics: how precisely the B replicates pin down the
  bootstrap's mean pairwise Jaccard (they shrink as B grows; they are not data uncertainty), by
  resampling replicates (weights c over replicates; pairs of one replicate with itself are left
  out: mean = (cᵀJc − Σc²) / ((Σc)² − Σc²)), with a leave-one-replicate-out jackknife for BCa;
- ``verdict``: stable iff mean pairwise Jaccard ≥ 0.8 with B ≥ 100 and no empty replicate
  circuit — the paper's bar for ``multinomial``; the verdict names the other methods.

Two passes: every replicate's aggregate (and the score intervals) a column block of the scores at a
time (one block in memory; blocks of their budget for scores on disk, ``ScoreShards``: every
aggregation is per edge, so the blocks do not change it), then the replicates' top-n circuits.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mivar_jax import engine
from mivar_jax._checks import check_int, check_key
from mivar_jax._shards import column_blocks
from mivar_jax.aggregation import aggregate_counts, check_aggregation, fixed_point_jit
from mivar_jax.circuits.pruning import prune_dense
from mivar_jax.circuits.selection import topn
from mivar_jax.engine import EDGES, INPUTS
from mivar_jax.graph import Graph
from mivar_jax.sharding import Spec
from mivar_jax.stats._checks import as_scores, to_json_dict
from mivar_jax.stats.intervals import (
    Confidence,
    bca_interval,
    bca_levels,
    column_quantiles_tails,
    percentile_interval,
    percentile_levels,
)

BOOTSTRAP_METHODS = ("multinomial", "subsample", "disjoint-splits")
STABLE_JACCARD, MIN_REPLICATES = 0.8, 100
JACCARD_STATS = ("mean_jaccard", "jaccard_cv", "mean_node_jaccard", "node_jaccard_cv")
JACCARD_INTERVAL = "Monte-Carlo interval over the B replicates"


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    method: str
    aggregation: str
    n_edges: int
    n_replicates: int
    n_inputs: int
    n_draws: int  # inputs per replicate: N, except for the m-out-of-N bootstrap
    confidence: float
    aggregated: np.ndarray  # [B, E]
    full_aggregate: np.ndarray  # [E]
    circuits: np.ndarray  # [B, E] bool, pruned
    nodes: np.ndarray  # [B, S+1] bool
    full_circuit: np.ndarray  # [E] bool
    majority_circuit: np.ndarray  # [E] bool
    jaccard: np.ndarray  # [B, B]
    node_jaccard: np.ndarray  # [B, B]
    mean_jaccard: float
    jaccard_cv: float
    mean_node_jaccard: float
    node_jaccard_cv: float
    jaccard_to_full: np.ndarray  # [B]
    jaccard_to_majority: np.ndarray  # [B]
    inclusion_frequency: np.ndarray  # [E]
    sizes: np.ndarray  # [B]
    node_sizes: np.ndarray  # [B]
    cut_ties: np.ndarray  # [B] edges tied with the n-th at the top-n cut but left out
    full_cut_ties: int  # the same for the full-data circuit
    score_ci_percentile: np.ndarray | None  # [2, E]; None for disjoint-splits
    score_ci_bca: np.ndarray | None  # [2, E]; multinomial only
    jaccard_ci_percentile: dict[str, list[float]]  # Monte-Carlo intervals (JACCARD_INTERVAL)
    jaccard_ci_bca: dict[str, list[float]]

    @property
    def n_empty(self) -> int:
        """Replicate circuits left empty by pruning (two empty circuits have Jaccard 1)."""
        return int((self.sizes == 0).sum())

    @property
    def stable(self) -> bool:
        """Mean pairwise Jaccard ≥ 0.8 over B ≥ 100 replicates, none of them empty."""
        return self.n_replicates >= MIN_REPLICATES and self.n_empty == 0 and self.mean_jaccard >= STABLE_JACCARD

    @property
    def verdict(self) -> str:
        lo, hi = self.jaccard_ci_percentile["mean_jaccard"]
        pct = round(100 * self.confidence)
        stat = (
            f"mean pairwise Jaccard {self.mean_jaccard:.3f} over B = {self.n_replicates} {self._method_words} "
            f"(Monte-Carlo {pct}% interval over the replicates [{lo:.3f}, {hi:.3f}])"
        )
        if self.n_empty == self.n_replicates:
            return f"undetermined: every replicate circuit is empty after pruning (raise n_edges from {self.n_edges})"
        empty = f"; {self.n_empty} of {self.n_replicates} replicate circuits are empty after pruning"
        ties = int((self.cut_ties > 0).sum())
        tie_note = (
            f"; {ties} of {self.n_replicates} replicates had ties at the top-{self.n_edges} cut (broken toward the "
            "lower edge index in every replicate, which can inflate Jaccard)"
            if ties
            else ""
        )
        note = (empty if self.n_empty else "") + tie_note
        if self.n_replicates < MIN_REPLICATES:
            return f"undetermined: {stat} (the bar needs B ≥ {MIN_REPLICATES}){note}"
        bar = (
            "the paper's bar"
            if self.method == "multinomial"
            else "the paper's threshold, set for the multinomial bootstrap"
        )
        if self.mean_jaccard < STABLE_JACCARD:
            return f"unstable: {stat} < {STABLE_JACCARD} ({bar}){note}"
        if self.n_empty:  # two empty circuits count as identical: the mean cannot vouch for them
            return (
                f"undetermined: {stat} ≥ {STABLE_JACCARD}{empty}, and empty circuits count as identical, which "
                f"inflates Jaccard (stable needs every replicate non-empty: raise n_edges from {self.n_edges}){tie_note}"
            )
        return f"stable: {stat} ≥ {STABLE_JACCARD} ({bar}){tie_note}"

    @property
    def _method_words(self) -> str:
        if self.n_draws != self.n_inputs:
            return f"m-out-of-N bootstrap replicates ({self.n_draws} draws from {self.n_inputs} inputs)"
        return {
            "multinomial": "multinomial bootstrap replicates",
            "subsample": "subsamples without replacement",
            "disjoint-splits": "disjoint splits",
            "seeds": "seeds of a learned mask",
            "data-replicates": "learned masks on bootstrap replicates of the inputs",
        }[self.method]

    def summary(self) -> dict:
        return {
            "method": self.method,
            "aggregation": self.aggregation,
            "n_edges": self.n_edges,
            "n_replicates": self.n_replicates,
            "n_inputs": self.n_inputs,
            "n_draws": self.n_draws,
            "mean_jaccard": self.mean_jaccard,
            "jaccard_cv": self.jaccard_cv,
            "mean_node_jaccard": self.mean_node_jaccard,
            "node_jaccard_cv": self.node_jaccard_cv,
            "mean_jaccard_to_full": float(self.jaccard_to_full.mean()),
            "mean_jaccard_to_majority": float(self.jaccard_to_majority.mean()),
            "majority_circuit_edges": int(self.majority_circuit.sum()),
            "full_circuit_edges": int(self.full_circuit.sum()),
            "size_mean": float(self.sizes.mean()),
            "size_min": int(self.sizes.min()),
            "size_max": int(self.sizes.max()),
            "n_empty": self.n_empty,
            "replicates_with_cut_ties": int((self.cut_ties > 0).sum()),
            "full_cut_ties": self.full_cut_ties,
            "jaccard_interval": JACCARD_INTERVAL,
            "jaccard_ci_percentile": self.jaccard_ci_percentile,
            "jaccard_ci_bca": self.jaccard_ci_bca,
            "confidence": self.confidence,
            "stable": self.stable,
            "verdict": self.verdict,
        }

    def to_json(self, arrays: bool = False) -> dict:
        """The summary, plus the per-replicate and per-edge arrays when ``arrays``."""
        d = self.summary()
        if arrays:
            big = ("aggregated", "circuits", "nodes")
            d.update({k: v for k, v in to_json_dict(self).items() if k not in big and k not in d})
        return d


def _weights(key, method: str, n: int, b: jax.Array, n_replicates: int, fraction: float, draws: int) -> jax.Array:
    """Weights [N] of replicate ``b`` (a traced int)."""
    if method == "multinomial":
        idx = jax.random.randint(jax.random.fold_in(key, b), (draws,), 0, n)
        return jnp.zeros(n, jnp.float32).at[idx].add(1.0)
    if method == "subsample":
        m = max(1, int(fraction * n))
        perm = jax.random.permutation(jax.random.fold_in(key, b), n)
        return jnp.zeros(n, jnp.float32).at[perm[:m]].set(1.0)
    size = n // n_replicates
    perm = jax.random.permutation(key, n)  # one permutation shared by all splits
    part = jax.lax.dynamic_slice_in_dim(perm, b * size, size)
    return jnp.zeros(n, jnp.float32).at[part].set(1.0)


@functools.lru_cache(maxsize=32)
def _aggregate_kernel(method, how, n_replicates, fraction, draws, mesh):
    """The aggregates [C, w] of replicates ``ids_C`` on one column block [N, w] of the scores."""

    def kernel(key, s_NxE, fixed, ids_C):
        n = s_NxE.shape[0]
        w_CxN = jax.vmap(lambda b: _weights(key, method, n, b, n_replicates, fraction, draws))(ids_C)
        return jax.vmap(lambda w: aggregate_counts(s_NxE, how, w, max(n, draws), fixed))(w_CxN)

    rows = Spec((EDGES, INPUTS))
    return engine.kernel(kernel, mesh, (Spec(), Spec(), Spec(), rows), rows)


@functools.lru_cache(maxsize=32)
def _select_kernel(graph: Graph, n_edges: int, absolute: bool, mesh):
    """Pruned top-n circuits [C, E], their nodes [C, S+1] and cut ties [C], from values [C, E]."""

    def kernel(agg_CxE):
        top, ties = topn(agg_CxE, n_edges, absolute)
        kept, nodes = prune_dense(graph, top)
        return kept, nodes, ties

    rows = Spec((EDGES, INPUTS))
    return engine.kernel(kernel, mesh, (rows,), (rows,) * 3)


def _pair_stats(j_BxB: jax.Array, c_RxB: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and CV of J over pairs of distinct replicates, replicate r weighted c_r, for R weight
    vectors at once (matvecs only: no per-resample B × B arrays). J is centred on its plain
    pair mean first, so the variance E[J²] − E[J]² does not cancel catastrophically."""
    B = j_BxB.shape[0]
    m0 = (j_BxB.sum() - jnp.trace(j_BxB)) / (B * (B - 1))
    jc = j_BxB - m0
    diag_w = c_RxB * c_RxB
    total = c_RxB.sum(1) ** 2 - diag_w.sum(1)
    s1 = ((c_RxB @ jc) * c_RxB).sum(1) - diag_w @ jnp.diagonal(jc)
    s2 = ((c_RxB @ (jc * jc)) * c_RxB).sum(1) - diag_w @ jnp.diagonal(jc) ** 2
    shift = s1 / total
    mean = m0 + shift
    return mean, jnp.sqrt(jnp.maximum(s2 / total - shift**2, 0.0)) / mean


@functools.partial(jax.jit, static_argnames=("n_resamples",))
def _jaccard_intervals(key, j_edges, j_nodes, n_resamples: int = 1000, confidence: Confidence = 0.95):
    B = j_edges.shape[0]

    def stats(c_RxB):
        return jnp.stack([*_pair_stats(j_edges, c_RxB), *_pair_stats(j_nodes, c_RxB)], axis=1)  # [R, 4]

    theta = stats(jnp.ones((1, B)))[0]
    counts = jax.vmap(lambda k: jnp.zeros(B).at[jax.random.randint(k, (B,), 0, B)].add(1.0))(
        jax.random.split(key, n_resamples)
    )
    star, jack = stats(counts), stats(1.0 - jnp.eye(B))
    return theta, percentile_interval(star, confidence), bca_interval(star, theta, jack, confidence)


@functools.partial(jax.jit, static_argnames=("how", "confidence"))
def _bca_levels(agg_BxE, full_E, s_NxE, how: str, confidence: float):
    return bca_levels(agg_BxE, full_E, _jackknife_aggregate(s_NxE, how), confidence)


def jaccard_matrix(masks_BxE) -> jax.Array:
    """[B, B] Jaccard indices of boolean masks (1 where both are empty): one matmul."""
    masks = jnp.asarray(masks_BxE)
    return _jaccard_to(masks, masks)


def mean_pairs(m_BxB) -> float:
    """Mean of a B × B matrix over pairs b ≠ b' (the diagonal left out)."""
    m = np.asarray(m_BxB, np.float64)
    B = m.shape[0]
    return float((m.sum() - np.trace(m)) / (B * (B - 1)))


@functools.partial(jax.jit, static_argnums=(1, 3))
def _full_aggregate(s_NxE, how, fixed, max_total: int):
    """The plain aggregate, from the fixed point built for weights totalling ≤ ``max_total``."""
    return aggregate_counts(s_NxE, how, jnp.ones(s_NxE.shape[0], jnp.float32), max_total, fixed)


@jax.jit
def _jaccard_to(masks_BxE, refs_RxE) -> jax.Array:
    """[B, R] Jaccard indices of each mask with each reference mask (1 where both are empty)."""
    k, r = masks_BxE.astype(jnp.float32), refs_RxE.astype(jnp.float32)
    inter = k @ r.T
    union = k.sum(1)[:, None] + r.sum(1)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def _jackknife_aggregate(s_NxE: jax.Array, how: str) -> jax.Array:
    """Leave-one-input-out aggregates [N, E], in closed form."""
    n = s_NxE.shape[0]
    if how in ("mean", "sum", "abs-mean"):
        loo = s_NxE.sum(0) - s_NxE
        return {"sum": loo, "mean": loo / (n - 1), "abs-mean": jnp.abs(loo) / (n - 1)}[how]
    if how == "mean-abs":
        a = jnp.abs(s_NxE)
        return (a.sum(0) - a) / (n - 1)
    # median of the N − 1 others: read off the sorted column, shifting past the removed rank
    order = jnp.argsort(s_NxE, axis=0)
    srt = jnp.take_along_axis(s_NxE, order, axis=0)
    rank = jnp.argsort(order, axis=0)  # rank of each input in its column
    m = n - 1
    lo_pos, hi_pos = (m - 1) // 2, m // 2

    def pick(pos):
        idx = jnp.where(rank > pos, pos, pos + 1)
        return jnp.take_along_axis(srt, idx, axis=0)

    return (pick(lo_pos) + pick(hi_pos)) / 2


REPLICATE_MEMORY = 512 * 2**20  # bytes per device for the replicates of one call


def bytes_per_replicate(n_inputs: int, n_edges: int, aggregation: str) -> int:
    """Working memory of one replicate: its aggregate, ranking and masks; the median also sorts [N, E]."""
    return n_edges * 24 + n_inputs * 4 + (n_inputs * n_edges * 12 if aggregation == "median" else 0)


def _per_call(res: engine.Resources, chunk: int | None, n_replicates: int, per_replicate: int) -> int:
    """Replicates per device and call: ``chunk``, or as many as fit the budget (at least one)."""
    cap = min(256, engine.bucket(n_replicates))
    return chunk or engine.fit(res.memory_budget, per_replicate, cap=cap, what="replicate", must_fit=False)


def bootstrap(
    scores,
    n_replicates: int = 100,
    n_edges: int = 50,
    *,
    aggregation: str = "mean",
    key: jax.Array | None = None,
    method: str = "multinomial",
    graph: Graph | None = None,
    fraction: float = 0.5,
    confidence: float = 0.95,
    chunk: int | None = None,
    mesh=None,
    n_draws: int | None = None,
) -> BootstrapResult:
    """Bootstrap the pruned top-``n_edges`` circuit of ``scores`` (a Scores, or [N, E] per-input
    scores with ``graph=``); see the module docstring. ``key`` is required (a jax.random.key);
    ``chunk`` replicates per device per call (default from the size of the scores; it sizes the
    memory only: results are the same bits for every chunk and device count). ``n_draws``: inputs
    drawn per ``multinomial`` replicate (default N; another m gives the m-out-of-N bootstrap, whose
    score intervals are then left out: they would describe a mean of m inputs, not the data's)."""
    key = check_key(key)
    graph = graph if graph is not None else getattr(scores, "graph", None)
    if graph is None:
        raise ValueError("pass graph= with an array of per-input scores (pruning needs the Graph)")
    if getattr(scores, "level", "edge") != "edge":
        raise ValueError("the bootstrap selects circuits from edge-level scores; got node-level scores")
    if getattr(scores, "graph", graph) != graph:
        raise ValueError(f"scores are for {scores.graph}, not {graph}")
    s = as_scores(scores, min_inputs=2)
    N, E = s.shape
    if graph.n_edges != E:
        raise ValueError(f"scores have {E} edges, the graph {graph.n_edges}")
    check_aggregation(aggregation)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"unknown bootstrap method {method!r}; choose from {list(BOOTSTRAP_METHODS)}")
    B = check_int(n_replicates, "n_replicates", low=2)
    n_edges = check_int(n_edges, "n_edges", high=E)
    if method == "disjoint-splits" and N // B < 1:
        raise ValueError(f"{B} disjoint splits of {N} inputs leave no input per split")
    if method == "subsample" and not (0 < fraction < 1 and 1 <= int(fraction * N) < N):
        raise ValueError(f"fraction must be in (0, 1) and leave 1 … N − 1 of the {N} inputs, got {fraction}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if chunk is not None:
        chunk = check_int(chunk, "chunk")
    draws = N if n_draws is None else check_int(n_draws, "n_draws", high=2**22)
    if draws != N and method != "multinomial":
        raise ValueError(f"n_draws applies to the multinomial bootstrap, not {method!r}")
    res = engine.resources(mesh=mesh, memory_budget=REPLICATE_MEMORY)
    intervals = method != "disjoint-splits" and draws == N
    agg_BxE, full_agg = np.empty((B, E), np.float32), np.empty(E, np.float32)
    quantiles = np.empty((4 if method == "multinomial" else 2, E), np.float32) if intervals else None
    aggregate_kernel = _aggregate_kernel(method, aggregation, B, float(fraction), draws, res.mesh)
    for cols, block in column_blocks(s):  # one block in memory; blocks of the budget on disk
        s_dev = jnp.asarray(block)
        fixed = fixed_point_jit(s_dev, aggregation, max(N, draws))  # once, for every replicate and the full data
        step = _per_call(res, chunk, B, bytes_per_replicate(N, block.shape[1], aggregation)) * res.n_devices
        for start in range(0, B, step):
            # gathered to the host shard by shard: no cross-device collective (which can deadlock the
            # CPU runtime when devices outnumber its threads)
            out = aggregate_kernel(key, s_dev, fixed, jnp.arange(start, start + step, dtype=jnp.int32))
            agg_BxE[start : start + step, cols] = np.asarray(out)[: B - start]
        full_agg[cols] = np.asarray(_full_aggregate(s_dev, aggregation, fixed, max(N, draws)))  # = aggregate(s)
        if intervals:  # percentile (and BCa) levels read off one pass over the tails
            levels = percentile_levels(confidence, block.shape[1])
            if method == "multinomial":
                levels = jnp.concatenate(
                    [levels, _bca_levels(agg_BxE[:, cols], full_agg[cols], s_dev, aggregation, confidence)]
                )
            quantiles[:, cols] = np.asarray(column_quantiles_tails(jnp.asarray(agg_BxE[:, cols]), levels))

    pct = quantiles[:2] if intervals else None
    bca = quantiles[2:] if intervals and method == "multinomial" else None
    if method == "subsample":  # deviations of m-of-N subsamples, rescaled to the full-data score's
        m = int(fraction * N)
        pct = full_agg + np.sqrt(m / (N - m)) * (pct - full_agg)
    return replicate_circuits(
        agg_BxE, full_agg, n_edges, graph=graph, key=key, method=method, aggregation=aggregation, n_inputs=N,
        n_draws=draws, confidence=confidence, score_ci=(pct, bca), chunk=chunk, mesh=mesh,
    )  # fmt: skip


def replicate_circuits(
    values_BxE,
    full_E,
    n_edges: int,
    *,
    graph: Graph,
    key,
    method: str,
    aggregation: str,
    n_inputs: int,
    n_draws: int | None = None,
    confidence: float = 0.95,
    absolute: bool = True,
    score_ci=(None, None),
    chunk: int | None = None,
    mesh=None,
) -> BootstrapResult:
    """The circuit statistics of B replicates' values [B, E] (the bootstrap's aggregates, or learned
    masks' logits with ``absolute=False``) and the full data's [E]: each replicate's pruned top-n
    circuit, the Jaccard matrices, their Monte-Carlo intervals (``key``) and the verdict."""
    B, E = values_BxE.shape
    res = engine.resources(mesh=mesh, memory_budget=REPLICATE_MEMORY)
    select_kernel = _select_kernel(graph, n_edges, absolute, res.mesh)
    step = _per_call(res, chunk, B, bytes_per_replicate(0, E, "mean")) * res.n_devices
    parts = ([], [], [])
    for start in range(0, B, step):
        rows = np.minimum(np.arange(start, start + step), B - 1)  # the last chunk padded with the last replicate
        for out, part in zip(parts, select_kernel(jnp.asarray(values_BxE[rows])), strict=True):
            out.append(np.asarray(part)[: B - start])
    kept_BxE, nodes_BxS = (jnp.asarray(np.concatenate(x)) for x in parts[:2])
    ties_B = np.concatenate(parts[2])

    full_top, full_ties = topn(jnp.asarray(full_E)[None], n_edges, absolute)
    full_kept, _ = prune_dense(graph, full_top)
    j_edges, j_nodes = jaccard_matrix(kept_BxE), jaccard_matrix(nodes_BxS)
    freq = kept_BxE.mean(0)
    majority = freq >= 0.5
    to_ref = _jaccard_to(kept_BxE, jnp.concatenate([full_kept, majority[None]]))
    theta, j_pct, j_bca = _jaccard_intervals(jax.random.fold_in(key, 2**30), j_edges, j_nodes, confidence=confidence)
    theta, j_pct, j_bca = np.asarray(theta), np.asarray(j_pct), np.asarray(j_bca)
    ci = lambda arr: {name: [float(arr[0, i]), float(arr[1, i])] for i, name in enumerate(JACCARD_STATS)}

    return BootstrapResult(
        method=method,
        aggregation=aggregation,
        n_edges=n_edges,
        n_replicates=B,
        n_inputs=n_inputs,
        n_draws=n_inputs if n_draws is None else n_draws,
        confidence=confidence,
        aggregated=np.asarray(values_BxE),
        full_aggregate=np.asarray(full_E),
        circuits=np.asarray(kept_BxE),
        nodes=np.asarray(nodes_BxS),
        full_circuit=np.asarray(full_kept[0]),
        majority_circuit=np.asarray(majority),
        jaccard=np.asarray(j_edges),
        node_jaccard=np.asarray(j_nodes),
        mean_jaccard=float(theta[0]),
        jaccard_cv=float(theta[1]),
        mean_node_jaccard=float(theta[2]),
        node_jaccard_cv=float(theta[3]),
        jaccard_to_full=np.asarray(to_ref[:, 0]),
        jaccard_to_majority=np.asarray(to_ref[:, 1]),
        inclusion_frequency=np.asarray(freq),
        sizes=np.asarray(kept_BxE.sum(1)),
        node_sizes=np.asarray(nodes_BxS.sum(1)),
        cut_ties=ties_B,
        full_cut_ties=int(full_ties[0]),
        score_ci_percentile=score_ci[0],
        score_ci_bca=score_ci[1],
        jaccard_ci_percentile=ci(j_pct),
        jaccard_ci_bca=ci(j_bca),
    )


def mask_stability(masks, n_edges: int | None = None, *, key=None, confidence: float = 0.95) -> BootstrapResult:
    """The stability of learned masks' pruned top-n circuits (``mv.learn_mask``), each seed a
    replicate and its logits α the replicate's values (ranked by α: the most open gates first); the
    full-data circuit is that of the seeds' mean α. Seed-to-seed stability for masks learned on all
    inputs (``method = "seeds"``), data-to-data for ``resample=True`` (``"data-replicates"``)."""
    key = check_key(key)
    n = masks.target_edges if n_edges is None else check_int(n_edges, "n_edges", high=masks.graph.n_edges)
    if len(masks.seeds) < 2:
        raise ValueError("stability needs masks of two or more seeds")
    return replicate_circuits(
        masks.logits, masks.logits.mean(0), n, graph=masks.graph, key=key, absolute=False,
        method="data-replicates" if masks.resample else "seeds", aggregation="mask-logit",
        n_inputs=masks.input_weights.shape[1], confidence=confidence,
    )  # fmt: skip
