"""``make``, ``capacity`` and ``list``: the task generators by name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mivar_jax.models.model import tokenizer_fingerprint
from mivar_jax.tasks import greater_than, ioi, sva
from mivar_jax.tasks.data import TaskData, build, check_noise
from mivar_jax.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (ioi.SPEC, sva.SPEC, greater_than.SPEC)}
PROGRESS_FROM = 5_000  # make() shows progress from this many pairs on


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


def _resolve(name: str, tokenizer, counterfactual: str | None):
    spec = get_task(name)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a Model gives its tokenizer
    if tokenizer is None:
        raise ValueError("a tokenizer is needed (the model was loaded without one)")
    counterfactual = counterfactual or spec.counterfactuals[0]
    if counterfactual not in spec.counterfactuals:
        raise ValueError(f"{name}: unknown counterfactual {counterfactual!r}; choose from {list(spec.counterfactuals)}")
    return spec, tokenizer, counterfactual


def capacity(
    name: str, tokenizer, templates: None | str | Sequence[str | int] = None, counterfactual: str | None = None
) -> int:
    """How many distinct clean/corrupted pairs ``make(name, tokenizer, …)`` can draw: the largest valid ``n``.

    It counts the distinct (clean, corrupted) texts the generator can form from the selected
    templates (``templates`` and ``counterfactual`` as in ``make``) and the candidate words that
    are single tokens for ``tokenizer`` (or a Model's). Cheap: nothing is drawn. It bounds a
    dataset's size from above: pairs whose clean and corrupted prompts tokenise to different
    lengths are dropped when the dataset is built (``info["dropped"]`` counts them), and since draws
    are not uniform over the pairs, ``make`` stops with an error if it does not find ``n``
    distinct pairs within ``50 n + 1000`` draws (which can happen only for ``n`` near the capacity).
    """
    spec, tokenizer, counterfactual = _resolve(name, tokenizer, counterfactual)
    return int(spec.capacity(tokenizer, spec.select(templates), counterfactual))


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
    ``noise``: counterfactual-noise amplitude σ, finite and ≥ 0 (keyed by ``noise_seed``, default
    ``seed``). ``n`` may not exceed ``capacity(name, tokenizer, templates, counterfactual)``; from
    5,000 pairs on, progress is shown. ``info["tokenizer"]`` is the tokenizer's fingerprint
    (``mivar_jax.models.model.tokenizer_fingerprint``), which ``check_for_model`` compares.
    """
    spec, tokenizer, counterfactual = _resolve(name, tokenizer, counterfactual)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    noise = check_noise(noise)
    template_ids = spec.select(templates)
    limit = spec.capacity(tokenizer, template_ids, counterfactual)
    if n > limit:
        which = "all templates" if templates is None else f"templates={templates!r}"
        raise ValueError(
            f"{name} can generate at most {limit:,} distinct pairs with this tokenizer and these templates "
            f"({which}, counterfactual={counterfactual!r}); got n = {int(n):,}"
        )
    progress = n >= PROGRESS_FROM
    rng = np.random.default_rng(seed)
    examples, info = spec.sample(tokenizer, rng, int(n), template_ids, counterfactual, progress=progress)
    fingerprint = tokenizer_fingerprint(tokenizer)
    info = {
        **info,
        "seed": seed,
        "templates": template_ids,
        "families": list(spec.families),
        "tokenizer": fingerprint or {"name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__},
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
        progress=progress,
    )
    if noise:
        data = data.with_noise(noise, seed if noise_seed is None else noise_seed)
    return data
