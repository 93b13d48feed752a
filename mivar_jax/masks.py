"""Learned edge masks: circuits found by gradient descent on a mask over every edge at once, many
seeds (and data replicates) trained together with ``jax.vmap``.

``edge-pruning`` (Bhaskar et al. 2024, hard-concrete gates of Louizos et al. 2018): each edge e has
a logit α_e; a training step draws u ~ U(0, 1) per edge and gates the edge with

    z_e = clip(σ((log u − log(1 − u) + α_e) / β) · (ζ − γ) + γ, 0, 1),   β = 2/3, γ = −0.1, ζ = 1.1

in the graph-form forward (``EdgeMix``: z = 1 reads the clean node output, z = 0 the ablated one:
corrupted run, zeros or means, as everywhere in the engine). The expected share of open gates is
ρ(α) = mean_e σ(α_e − β log(−γ/ζ)). The loss is Edge Pruning's Lagrangian,

    L = KL(full model ‖ masked model) + λ₁ (ρ − t) + λ₂ (ρ − t)²,

the KL at the answer position averaged over inputs (weighted by the replicate's input counts), α
minimising it and (λ₁, λ₂) maximising it (gradient ascent), each with Adam (optax; learning
rates ``lr`` and ``lr_lambda``). The target
density t falls linearly from 1 to ``target_edges / E`` over the first ``warmup`` share of the steps,
then stays there. α starts at ``INIT_LOGIT`` (gates almost surely open: the full model) plus
N(0, 0.01²) noise from the seed's key.

A seed s uses ``fold_in(key, s)`` for its initial noise and ``fold_in(·, step)`` for each step's
draws, so training seeds together (vmapped, in groups that fit the memory budget, each device of the
mesh training its block of a group) gives what
training them one by one gives (within float32 rounding of batched matrix products). With
``resample=True`` seed s also trains on its own multinomial bootstrap replicate of the inputs
(counts drawn from its key): seed-to-seed and data-to-data variability in one run.

``ugs`` (uniform gradient sampling; Li & Janson 2024, MIB's UGS): each edge keeps with probability
p_e = σ(α_e); a step draws u ~ U(0, 1) per edge and gates the edge with the ramp

    z_e = 1 − clip((u − p_e) / (p_e (1 − p_e)) + 1/2, 0, 1)

(open below p_e, closed above, linear in a window of width p_e (1 − p_e) around it, so E[z_e] = p_e
and the gradient reaches α through the window's draws); ρ(α) = mean_e σ(α_e). Here it trains under
the same Lagrangian as ``edge-pruning`` (the original uses a fixed penalty λ Σ_e p_e and drops
sampled edges left dangling; the Lagrangian reaches a size target instead).

Circuits: the top-n edges by α (n = ``target_edges`` by default), or the edges whose gates are open
with probability ≥ a threshold, pruned like every other circuit (``circuits.pruning``); α plays the
role of a replicate's aggregated scores in the statistics (``stats.mask_stability``: seed-to-seed, or data-to-data with ``resample=True``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mivar_jax import engine
from mivar_jax._checks import check_int, check_key
from mivar_jax._io import atomic_write_bytes
from mivar_jax._progress import progress_bar
from mivar_jax.circuits.circuit import Circuit
from mivar_jax.circuits.pruning import prune_dense
from mivar_jax.circuits.selection import topn
from mivar_jax.evaluation import _baseline_kernel, bytes_per_circuit
from mivar_jax.models.interventions import EdgeMix
from mivar_jax.models.transformer import forward
from mivar_jax.patching import check_ablation, dataset_means
from mivar_jax.sharding import EDGES, INPUTS, Spec
from mivar_jax.tasks.metrics import kl_divergence

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
INIT_LOGIT = 3.0
STEPS_PER_CALL = 10  # steps run in one compiled call (lax.scan); progress and checkpoints between calls


@dataclasses.dataclass(frozen=True)
class LearnedMasks:
    """Per-seed results of ``learn_mask``: ``logits`` α [S, E], the final expected density [S] and
    KL [S], and the KL / density after every call of ``STEPS_PER_CALL`` steps ([S, calls])."""

    method: str
    target_edges: int
    seeds: np.ndarray  # [S]
    input_weights: np.ndarray  # [S, N] each seed's counts of the inputs (1s, or its bootstrap replicate's)
    logits: np.ndarray  # [S, E]
    density: np.ndarray  # [S] ρ(α) at the end
    kl: np.ndarray  # [S] the last step's KL
    kl_history: np.ndarray  # [S, calls]
    density_history: np.ndarray  # [S, calls]
    steps: int
    resample: bool
    graph: object = dataclasses.field(repr=False)

    def masks(self, n_edges: int | None = None, *, threshold: float | None = None) -> np.ndarray:
        """The pruned circuits, [S, E] bool: the top-``n_edges`` edges by α (default n =
        ``target_edges``), or with ``threshold`` every edge whose gate is open with probability ≥
        it (ρ's term: P(z > 0) for ``edge-pruning``, p = σ(α) for ``ugs``; sizes then differ by seed)."""
        if threshold is not None:
            if n_edges is not None or not 0 < threshold < 1:
                raise ValueError(f"pass n_edges or a threshold in (0, 1), got {n_edges!r} and {threshold!r}")
            keep = open_probability(jnp.asarray(self.logits), self.method) >= threshold
        else:
            n = self.target_edges if n_edges is None else check_int(n_edges, "n_edges", high=self.graph.n_edges)
            keep, _ = topn(jnp.asarray(self.logits), n, absolute=False)  # by α: the most open gates
        return np.asarray(prune_dense(self.graph, keep)[0])

    def circuits(self, n_edges: int | None = None, *, threshold: float | None = None) -> list[Circuit]:
        masks = self.masks(n_edges, threshold=threshold)
        return [Circuit(self.graph, m, scores=a) for m, a in zip(masks, self.logits, strict=True)]

    def summary(self) -> dict:
        """The job and each seed's end state (stability across seeds: ``stats.mask_stability``):
        ``sizes`` of the pruned top-n circuits, ``open_gates`` (gates open with probability ≥ ½,
        before pruning; near ``target_edges`` once training has converged)."""
        open_gates = (open_probability(jnp.asarray(self.logits), self.method) >= 0.5).sum(1)
        return {
            "method": self.method, "target_edges": self.target_edges, "seeds": self.seeds.tolist(),
            "resample": self.resample, "steps": self.steps, "sizes": self.masks().sum(1).tolist(),
            "open_gates": np.asarray(open_gates).tolist(), "density": self.density.tolist(), "kl": self.kl.tolist(),
        }  # fmt: skip


def _hard_concrete(alpha, u):
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + alpha) / BETA)
    return jnp.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _uniform_ramp(alpha, u):
    p = jax.nn.sigmoid(alpha)
    return 1.0 - jnp.clip((u - p) / (p * (1.0 - p)) + 0.5, 0.0, 1.0)


# method → (gates z(α, u), each edge's term of the density ρ: P(z_e > 0) for hard-concrete gates (their
# expected L0 norm), E[z_e] = p_e for the uniform ramp)
GATES = {
    "edge-pruning": (_hard_concrete, lambda alpha: jax.nn.sigmoid(alpha - BETA * math.log(-GAMMA / ZETA))),
    "ugs": (_uniform_ramp, jax.nn.sigmoid),
}
MASK_METHODS = tuple(GATES)


def open_probability(alpha, method: str = "edge-pruning"):
    """Each gate's probability of being open under ``method`` (ρ's terms)."""
    return GATES[method][1](alpha)


def expected_density(alpha, method: str = "edge-pruning"):
    """ρ(α): the expected share of open gates of ``method``."""
    return open_probability(alpha, method).mean(-1)


@functools.lru_cache(maxsize=8)
def _train_kernel(cfg, method: str, warmup: int, target: float, lr: float, lr_lambda: float, mesh):
    """``STEPS_PER_CALL`` steps for a group of seeds (vmapped; with a mesh, each device trains its
    block of the seeds): state → state, (kl, density)."""
    tx = optax.multi_transform({"mask": optax.adam(lr), "lambda": optax.adam(lr_lambda)}, ("mask", "lambda"))
    gates, density = GATES[method][0], lambda alpha: expected_density(alpha, method)

    def one_seed(state, batches, params, weights_N, key, first):
        full, z_ref, b = batches

        def step(carry, i):
            alpha, lam, opt = carry
            k = jax.random.fold_in(key, first + i)
            t = 1.0 - (1.0 - target) * jnp.minimum(1.0, (first + i) / max(warmup, 1))

            def loss(alpha, lam):
                u = jax.random.uniform(k, alpha.shape, minval=1e-6, maxval=1 - 1e-6)
                logits = forward(
                    cfg, params, b.clean, b.attention_mask, (EdgeMix(gates(alpha, u), z_ref),),
                    logit_positions=b.answer_pos,
                )  # fmt: skip
                kl = (weights_N * kl_divergence(logits, full)).sum() / weights_N.sum()
                gap = density(alpha) - t
                return kl + lam[0] * gap + lam[1] * gap**2, kl

            (_, kl), (g_alpha, g_lam) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(alpha, lam)
            updates, opt = tx.update((g_alpha, -g_lam), opt, (alpha, lam))  # λ: gradient ascent
            alpha, lam = optax.apply_updates((alpha, lam), updates)
            return (alpha, lam, opt), (kl, density(alpha))

        state, (kl, rho) = jax.lax.scan(step, state, jnp.arange(STEPS_PER_CALL))
        return state, kl[-1], rho[-1]

    def run(states, batches, params, weights_SxN, keys, first):
        return jax.vmap(one_seed, in_axes=(0, None, None, 0, 0, None))(
            states, batches, params, weights_SxN, keys, first
        )

    seeds = Spec((EDGES, INPUTS))  # the seed axis over every device of the mesh
    return engine.kernel(run, mesh, (seeds, Spec(), Spec(), seeds, seeds, Spec()), (seeds, seeds, seeds)), tx


def learn_mask(
    model,
    data,
    *,
    method: str = "edge-pruning",
    target_edges: int,
    steps: int = 200,
    lr: float = 0.1,
    lr_lambda: float = 1.0,
    warmup: float = 0.5,
    seeds=4,
    key: jax.Array | None = None,
    ablation: str = "patch",
    resample: bool = False,
    memory_budget: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> LearnedMasks:
    """Learn edge masks of ``target_edges`` edges on ``data`` with ``method`` (``edge-pruning`` or
    ``ugs``; module docstring), one per seed.

    ``seeds``: how many (ids 0 … S−1) or a list of seed ids. ``steps`` (rounded up to a multiple of
    ``STEPS_PER_CALL``), Adam learning rates ``lr`` (mask logits) and ``lr_lambda`` (the
    multipliers), ``warmup``: share of the steps over which the target density falls to ``target_edges / E``. ``ablation``: ``patch`` |
    ``zero`` | ``mean``. Seeds are trained in groups that fit ``memory_budget`` bytes per device
    (default the engine's), spread over every device of the engine's mesh (a device trains its
    seeds on every input); all inputs enter every step. ``checkpoint``: a file where the state is saved after
    every call, and resumed from when it holds the same job."""
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}; choose from {list(MASK_METHODS)}")
    key = check_key(key)
    check_ablation(ablation)
    g, cfg = model.graph, model.config
    target_edges = check_int(target_edges, "target_edges", high=g.n_edges)
    steps = -(-check_int(steps, "steps") // STEPS_PER_CALL) * STEPS_PER_CALL
    if not 0 <= warmup <= 1 or not lr > 0 or not lr_lambda > 0:
        raise ValueError(f"warmup must be in [0, 1] and lr, lr_lambda > 0, got {warmup}, {lr}, {lr_lambda}")
    seed_ids = np.arange(seeds) if isinstance(seeds, int | np.integer) else np.asarray(seeds, np.int64)
    if seed_ids.ndim != 1 or seed_ids.size == 0 or len(np.unique(seed_ids)) != seed_ids.size:
        raise ValueError(f"seeds must be a positive count or a list of distinct ids, got {seeds!r}")

    res = engine.resources(model, data, memory_budget=memory_budget)
    N = len(data)
    means = dataset_means(model, data, N, ablation)
    b, rows = next(data.batches(N))  # every input, in one batch that every device holds whole
    assert len(rows) == N
    full, z_ref, _, _, _ = _baseline_kernel(cfg, data.metric, ablation, None)(
        model.params, b, data.noise, data.noise_seed, means
    )
    batches = (full, z_ref, b)
    n_pad = full.shape[0]
    per_seed = 3 * bytes_per_circuit(cfg, n_pad, data.n_positions)  # forward + saved activations + backward
    n_dev = res.n_devices
    group = engine.fit(
        res.memory_budget, per_seed, cap=-(-len(seed_ids) // n_dev), what="seed", fix="lower the inputs per step"
    )
    run, tx = _train_kernel(
        cfg, method, int(round(warmup * steps)), target_edges / g.n_edges, float(lr), float(lr_lambda), res.mesh
    )
    params = engine.on_mesh(model.params, res.mesh)

    # per seed: keys of its initial noise, its data replicate and its steps
    k_init, k_data, keys = (jnp.stack(k) for k in zip(*(jax.random.split(jax.random.fold_in(key, int(s)), 3)
                                                          for s in seed_ids), strict=True))  # fmt: skip
    weights = np.zeros((len(seed_ids), n_pad), np.float32)
    weights[:, :N] = 1.0
    if resample:
        counts = jax.vmap(lambda k: jnp.zeros(N).at[jax.random.randint(k, (N,), 0, N)].add(1.0))(k_data)
        weights[:, :N] = np.asarray(counts)
    alpha0 = INIT_LOGIT + 0.01 * jax.vmap(lambda k: jax.random.normal(k, (g.n_edges,)))(k_init)
    lam0 = jnp.zeros((len(seed_ids), 2), jnp.float32)
    state = (alpha0, lam0, jax.vmap(lambda a, lam: tx.init((a, lam)))(alpha0, lam0))
    job = {"method": method, "target_edges": target_edges, "steps": steps, "lr": lr, "lr_lambda": lr_lambda, "warmup": warmup,
           "seeds": seed_ids.tolist(), "resample": resample, "ablation": ablation, "uid": np.asarray(data.uid).tolist(),
           "graph": g.config_dict()}  # fmt: skip
    start, history = 0, []
    if checkpoint is not None and os.path.exists(checkpoint):
        start, state, history = _load(checkpoint, job, state)

    calls = steps // STEPS_PER_CALL
    with progress_bar(progress, calls * len(seed_ids), f"{method} masks") as bar:
        for c in range(start, calls):
            outs = []
            for g0 in range(0, len(seed_ids), group * n_dev):
                # this call's seeds, filled up to a multiple of the devices by repeating the last
                end = min(g0 + group * n_dev, len(seed_ids))
                real = end - g0
                pick = slice(g0, end) if real % n_dev == 0 else np.r_[g0:end, np.full(-real % n_dev, end - 1)]
                part = jax.tree.map(lambda x: x[pick], state)  # noqa: B023
                out = run(part, batches, params, jnp.asarray(weights[pick]), keys[pick], c * STEPS_PER_CALL)
                if res.mesh is not None:  # gathered on the host (no cross-device collective), fillers dropped
                    out = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)[:real]), out)  # noqa: B023
                outs.append(out)
                if bar is not None:
                    bar(real)
            state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[o[0] for o in outs])
            history.append(np.stack([np.concatenate([np.asarray(o[i]) for o in outs]) for i in (1, 2)]))
            if checkpoint is not None:
                _save(checkpoint, job, c + 1, state, history)
    hist = np.stack(history, axis=-1)  # [2, S, calls]
    alpha = np.asarray(state[0])
    return LearnedMasks(
        method, target_edges, seed_ids, weights[:, :N], alpha, np.asarray(expected_density(jnp.asarray(alpha), method)), hist[0, :, -1],
        hist[0], hist[1], steps, resample, g,
    )  # fmt: skip


def _save(path, job: dict, calls_done: int, state, history) -> None:
    leaves = jax.tree.leaves(state)
    buf = io.BytesIO()
    np.savez(buf, job=json.dumps(job), calls=calls_done, history=np.stack(history),
             **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})  # fmt: skip
    atomic_write_bytes(path, buf.getvalue())


def _load(path, job: dict, state):
    with np.load(path) as f:
        if json.loads(str(f["job"])) != job:
            raise ValueError(f"{path}: a checkpoint of another mask job; remove it or pass another checkpoint")
        leaves, tree = jax.tree.flatten(state)
        new = [jnp.asarray(f[f"leaf{i}"]) for i in range(len(leaves))]
        return int(f["calls"]), jax.tree.unflatten(tree, new), list(f["history"])
