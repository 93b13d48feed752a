"""``make`` and ``list``: the task generators by name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mivar_jax.tasks import greater_than, ioi, sva
from mivar_jax.tasks.data import TaskData, build
from mivar_jax.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (ioi.SPEC, sva.SPEC, greater_than.SPEC)}


def list_tasks() -> dict[str, dict]:
    """Every task: description, template families (with their templates), counterfactuals, metric."""
    return {
        name: {
            "description": spec.description,
            "families": {f: list(t) for f, t in spec.families.items()},
            "counterfactuals": list(spec.counterfactuals),
            "metric": spec.metric,
        }
        for name, spec in TASKS.items()
    }


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {sorted(TASKS)}")
    return TASKS[name]


def make(
    name: str,
    tokenizer,
    n: int,
    seed: int = 0,
    *,
    templates: None | str | Sequence[str | int] = None,
    counterfactual: str | None = None,
    noise: float = 0.0,
    noise_seed: int | None = None,
    prepend_bos: bool = False,
) -> TaskData:
    """Draw ``n`` distinct clean/corrupted pairs of task ``name`` for ``tokenizer`` (or a Model).

    ``seed`` draws the dataset (the same seed gives the same dataset; a new seed a fresh one from
    the generator: meta-dataset resampling). ``templates``: all (None), a family name, or a list of
    family names / template ids. ``counterfactual``: the task's first type by default.
    ``noise``: counterfactual-noise amplitude σ (keyed by ``noise_seed``, default ``seed``).
    """
    spec = get_task(name)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a Model gives its tokenizer
    if tokenizer is None:
        raise ValueError("a tokenizer is needed (the model was loaded without one)")
    counterfactual = counterfactual or spec.counterfactuals[0]
    if counterfactual not in spec.counterfactuals:
        raise ValueError(f"{name}: unknown counterfactual {counterfactual!r}; choose from {list(spec.counterfactuals)}")
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if noise < 0:
        raise ValueError(f"noise amplitude must be ≥ 0, got {noise}")
    template_ids = spec.select(templates)
    rng = np.random.default_rng(seed)
    examples, info = spec.sample(tokenizer, rng, int(n), template_ids, counterfactual)
    info = {
        **info,
        "seed": seed,
        "templates": template_ids,
        "families": list(spec.families),
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
    }
    data, _ = build(
        examples,
        tokenizer,
        task=name,
        metric=spec.metric,
        counterfactual=counterfactual,
        seed=seed,
        info=info,
        prepend_bos=prepend_bos,
    )
    if noise:
        data = data.with_noise(noise, seed if noise_seed is None else noise_seed)
    return data
