"""Windows: the positions a counterfactual patch can change.

Counterfactual patching leaves everything before the first position where the clean and corrupted
prompts differ as in the clean run (attention is causal), and nothing after the answer position
reaches the metric: a patched run computes only the window between the two, reading earlier keys
and values from the clean run's caches (``interventions.Window``). For IOI that is a few of ~17
positions. Zero and mean ablation change every position: their window is the whole prompt.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from mivar_jax.tasks.data import TaskBatch, TaskData


def first_changes(clean, corrupted, attention_mask, answer_pos, xp=np):
    """Per input, the first real position where the clean and corrupted prompts differ (the
    answer position where none does, or where it comes later). numpy or jax.numpy (``xp``)."""
    differs = (clean != corrupted) & (attention_mask > 0)
    first = xp.where(differs.any(1), differs.argmax(1), answer_pos)
    return xp.minimum(first, answer_pos)


def windows(
    data: TaskData, ablation: str, batch_size: int = 8, max_widths: int = 3, per_width: float = 0.0
) -> np.ndarray:
    """Per input, how many positions a patch computes (a window of the prompt).

    Counterfactual patching leaves everything before the first position where the prompts differ
    as in the clean run, and nothing after the answer position reaches the metric (attention is
    causal): an input needs answer − first + 1 positions. Inputs are grouped by window width
    (a compilation and at least one call each, of up to ``batch_size`` inputs); at most
    ``max_widths`` widths are chosen to minimise the positions computed plus, per call, half a
    call of full-width prompts (the per-call cost that favours fewer, fuller groups), plus
    ``per_width`` positions per width (its compilation: a small job takes one width). Zero or
    mean ablation change every position. Where a window starts: ``window_start``."""
    if ablation != "patch":
        return np.full(len(data), data.n_positions)
    first = first_changes(data.clean, data.corrupted, data.attention_mask, data.answer_pos)
    need = np.minimum(data.answer_pos - first + 1, data.n_positions)
    values, counts = np.unique(need, return_counts=True)
    per_call = batch_size * data.n_positions / 2
    widths = _cheapest_widths(values, counts, max_widths, batch_size, per_call, per_width)
    return widths[np.searchsorted(widths, need)]


def _cheapest_widths(values, counts, k: int, batch_size: int, per_call: float, per_width: float) -> np.ndarray:
    """At most ``k`` widths for inputs needing sorted ``values`` (``counts`` of each), each the
    largest need of a run of consecutive values, minimising Σ_groups count × width + calls ×
    ``per_call`` (calls = ⌈count / batch_size⌉) + ``per_width``: dynamic programming over the
    split points."""
    n = len(values)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    group = lambda h, i: (
        (prefix[i] - prefix[h]) * values[i - 1] + -(-(prefix[i] - prefix[h]) // batch_size) * per_call + per_width
    )
    cost = np.full((k + 1, n + 1), np.inf)  # cost[j, i]: values[:i] in j groups
    cut = np.zeros((k + 1, n + 1), int)
    cost[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            options = [cost[j - 1, h] + group(h, i) for h in range(i)]
            cut[j, i] = int(np.argmin(options))
            cost[j, i] = options[cut[j, i]]
    j, i, ends = int(np.argmin(cost[1:, n])) + 1, n, []
    while i > 0:
        ends.append(values[i - 1])
        i, j = cut[j, i], j - 1
    return np.array(sorted(ends))


def window_start(b: TaskBatch, width: int) -> Int[Array, " N"]:
    """Per input of a batch, the first position of its window of ``width`` positions (see
    ``windows``): the first change, moved left where the window would pass the prompts' end."""
    first = first_changes(b.clean, b.corrupted, b.attention_mask, b.answer_pos, jnp)
    return jnp.minimum(first, b.clean.shape[1] - width).astype(jnp.int32)
