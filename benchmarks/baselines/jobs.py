"""The jobs done the way hook-based PyTorch libraries do them (EAP-IG / ACDC style, on TransformerLens):
a Python loop over edges with one patched forward each, gradients read by backward hooks, circuits
evaluated by patching hooks, a Python loop over bootstrap replicates. Written plainly, not tuned:
the baseline a user would otherwise run.

Conventions match the engine: node outputs z_u (embeddings at ``blocks.0.hook_resid_pre``, per-head
results without b_O, MLP outputs), Δz = z(corrupted) − z(clean), scores estimate
metric(patched) − metric(clean) of the task's logit difference at the answer position.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.baselines.tl_models import node_hooks, slot_hooks


def logit_diff(logits, answer_pos, correct, incorrect) -> torch.Tensor:
    """[N]: mean logit of the correct answers − mean logit of the incorrect ones (ids ≥ 0)."""
    rows = logits[torch.arange(logits.shape[0]), answer_pos]  # [N, V]

    def mean(ids):
        valid = ids >= 0
        return (rows.gather(1, ids.clamp(min=0)) * valid).sum(1) / valid.sum(1).clamp(min=1)

    return mean(correct) - mean(incorrect)


def _tensors(data, rows, device):
    t = lambda a: torch.tensor(np.asarray(a[rows]), dtype=torch.long, device=device)
    return t(data.clean), t(data.corrupted), t(data.answer_pos), t(data.correct), t(data.incorrect)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield np.arange(start, min(n, start + batch_size))


def _node_outputs(model, graph, tokens) -> torch.Tensor:
    """[N, P, S, D]: every node's output on ``tokens`` (a cached forward)."""
    names = {name for name, _ in node_hooks(graph)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack(
        [cache[name] if head is None else cache[name][:, :, head] for name, head in node_hooks(graph)], 2
    )


def _add_at(head: int | None, delta: torch.Tensor) -> Callable:
    def hook(x, hook):
        x = x.clone()
        if head is None:
            x += delta
        else:
            x[:, :, head] += delta
        return x

    return hook


# ---------------------------------------------------------------------------------------------- exact
@torch.no_grad()
def exact_edges(model, graph, data, edges, batch_size: int = 8, progress: Callable | None = None) -> np.ndarray:
    """[N, len(edges)]: one patched forward per edge and batch, the edge's source replaced by its
    corrupted output in that destination's input only."""
    slots = slot_hooks(graph)
    out = np.zeros((len(data), len(edges)), np.float32)
    for rows in _batches(len(data), batch_size):
        clean, corrupted, pos, good, bad = _tensors(data, rows, model.cfg.device)
        z_clean, z_corr = _node_outputs(model, graph, clean), _node_outputs(model, graph, corrupted)
        base = logit_diff(model(clean), pos, good, bad)
        for k, e in enumerate(edges):
            u, v = int(graph.edge_src[e]), int(graph.edge_dst[e])
            name, head = slots[v]
            logits = model.run_with_hooks(clean, fwd_hooks=[(name, _add_at(head, z_corr[:, :, u] - z_clean[:, :, u]))])
            out[rows, k] = (logit_diff(logits, pos, good, bad) - base).cpu().numpy()
            if progress is not None:
                progress(len(rows))
    return out


# ---------------------------------------------------------------------------------------------- gradients
def _slot_grads(model, graph, tokens, pos, good, bad, resid_pre=None) -> torch.Tensor:
    """[N, P, T, D]: ∂Σ metric / ∂(each slot's input), read off backward hooks (one forward + backward)."""
    slots = slot_hooks(graph)
    grads = torch.zeros(tokens.shape[0], tokens.shape[1], len(slots), model.cfg.d_model, device=tokens.device)
    by_hook: dict[str, list[tuple[int, int | None]]] = {}
    for t, (name, head) in enumerate(slots):
        by_hook.setdefault(name, []).append((t, head))

    def backward_hook(name):
        def hook(grad, hook):
            for t, head in by_hook[name]:
                grads[:, :, t] += grad if head is None else grad[:, :, head]

        return hook

    fwd = []
    if resid_pre is not None:  # interpolated input embeddings (a leaf, so every slot's gradient flows)
        resid_pre = resid_pre.detach().requires_grad_(True)
        fwd.append(("blocks.0.hook_resid_pre", lambda x, hook: resid_pre))
    bwd = [(name, backward_hook(name)) for name in by_hook]
    with model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = model(tokens)
        logit_diff(logits, pos, good, bad).sum().backward()
    model.zero_grad(set_to_none=True)
    return grads


def _scores(delta_NxPxSxD, grads_NxPxTxD, graph, per_input: bool) -> np.ndarray:
    src, dst = torch.tensor(graph.edge_src), torch.tensor(graph.edge_dst)
    if per_input:
        dense = torch.einsum("npsd,nptd->nst", delta_NxPxSxD, grads_NxPxTxD)
        return dense[:, src, dst].cpu().numpy()
    dense = torch.einsum("npsd,nptd->st", delta_NxPxSxD, grads_NxPxTxD)  # summed over the batch, as the reference
    return dense[src, dst].cpu().numpy()


def eap(model, graph, data, batch_size: int = 8, per_input: bool = True) -> np.ndarray:
    """EAP: Δz_u · ∂metric/∂in_v at the clean run. [N, E] (``per_input``) or the batch sum [E]."""
    return eap_ig_inputs(model, graph, data, steps=0, batch_size=batch_size, per_input=per_input)


def eap_ig_inputs(model, graph, data, steps: int = 5, batch_size: int = 8, per_input: bool = True) -> np.ndarray:
    """EAP-IG on inputs (reference convention: input embeddings x̃ + (k/m)(x − x̃), k = 0…m−1, gradients
    averaged); ``steps=0`` is EAP. [N, E] (``per_input``) or summed over inputs [E]."""
    chunks = []
    for rows in _batches(len(data), batch_size):
        clean, corrupted, pos, good, bad = _tensors(data, rows, model.cfg.device)
        with torch.no_grad():
            z_clean, z_corr = _node_outputs(model, graph, clean), _node_outputs(model, graph, corrupted)
        delta = z_corr - z_clean
        if steps == 0:
            grads = _slot_grads(model, graph, clean, pos, good, bad)
        else:
            x, x_corr = z_clean[:, :, 0], z_corr[:, :, 0]
            grads = (
                sum(
                    _slot_grads(model, graph, clean, pos, good, bad, resid_pre=x_corr + (k / steps) * (x - x_corr))
                    for k in range(steps)
                )
                / steps
            )
        chunks.append(_scores(delta, grads, graph, per_input))
    return np.concatenate(chunks) if per_input else np.sum(chunks, 0)


# ---------------------------------------------------------------------------------------------- circuits
@torch.no_grad()
def evaluate_circuits(model, graph, data, masks_CxE: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """[C, N]: the metric with every edge outside each circuit patched to the corrupted run, by hooks
    (EAP-IG's evaluate_graph): node-output hooks record z_u − z̃_u of the running forward, and each
    slot's input hook subtracts the recorded differences of its sources outside the circuit."""
    out = np.zeros((len(masks_CxE), len(data)), np.float32)
    for rows in _batches(len(data), batch_size):
        clean, corrupted, pos, good, bad = _tensors(data, rows, model.cfg.device)
        z_corr = _node_outputs(model, graph, corrupted)
        for c, mask in enumerate(masks_CxE):
            logits = _circuit_forward(model, graph, clean, z_corr, mask)
            out[c, rows] = logit_diff(logits, pos, good, bad).cpu().numpy()
    return out


def _circuit_forward(model, graph, clean, z_corr, mask) -> torch.Tensor:
    ablate = torch.zeros(graph.n_src, graph.n_dst, device=clean.device)
    ablate[graph.edge_src[~mask], graph.edge_dst[~mask]] = 1.0
    diff = torch.zeros_like(z_corr)

    def record(u, head):
        def hook(x, hook):
            diff[:, :, u] = (x if head is None else x[:, :, head]) - z_corr[:, :, u]
            return x

        return hook

    def patch(t, head):
        def hook(x, hook):
            x = x.clone()
            delta = torch.einsum("npsd,s->npd", diff, ablate[:, t])
            if head is None:
                x -= delta
            else:
                x[:, :, head] -= delta
            return x

        return hook

    # a slot's hook runs after the node hooks of every source upstream of it: differences are current
    hooks = [(name, record(u, head)) for u, (name, head) in enumerate(node_hooks(graph))]
    hooks += [(name, patch(t, head)) for t, (name, head) in enumerate(slot_hooks(graph))]
    return model.run_with_hooks(clean, fwd_hooks=hooks)


# ---------------------------------------------------------------------------------------------- bootstrap
def prune(graph, mask: np.ndarray) -> np.ndarray:
    """Remove edges not on an input → logits path (a Python fixed-point loop, as EAP-IG's prune)."""
    from mivar_jax.circuits.pruning import slot_owner

    owner = slot_owner(graph)
    src, dst_node = graph.edge_src, owner[graph.edge_dst]
    mask = mask.copy()
    while True:
        edges = np.nonzero(mask)[0]
        has_parent = {0} | {int(dst_node[e]) for e in edges}
        has_child = {graph.n_src} | {int(src[e]) for e in edges}
        keep = [e for e in edges if int(src[e]) in has_parent and int(dst_node[e]) in has_child]
        if len(keep) == len(edges):
            return mask
        mask[:] = False
        mask[keep] = True


def bootstrap(graph, scores_NxE: np.ndarray, n_replicates: int, n_edges: int, seed: int = 0) -> dict:
    """A Python loop over replicates: resample inputs, mean, top-n by |score|, prune; then every pair's
    Jaccard from Python sets."""
    rng = np.random.default_rng(seed)
    n = len(scores_NxE)
    circuits = []
    for _ in range(n_replicates):
        agg = scores_NxE[rng.integers(0, n, n)].mean(0)
        top = np.zeros(graph.n_edges, bool)
        top[np.argsort(-np.abs(agg), kind="stable")[:n_edges]] = True
        circuits.append(set(np.nonzero(prune(graph, top))[0].tolist()))
    pairs = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in itertools.combinations(circuits, 2)]
    return {"mean_jaccard": float(np.mean(pairs)), "sizes": [len(c) for c in circuits]}
