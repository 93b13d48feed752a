"""What a task generator is: template families, counterfactual types, a metric, a sampler."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mivar_jax._progress import progress_bar
from mivar_jax.tasks.data import Example, single_token


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task generator.

    ``families`` maps a paraphrase-family name to its templates (template ids number them in
    order across families). ``sample(tokenizer, rng, n, template_ids, counterfactual, progress=False)``
    returns ``(examples, info)`` with exactly ``n`` distinct pairs or raises when the pool is too
    small. ``capacity(tokenizer, template_ids, counterfactual)`` counts the distinct (clean,
    corrupted) text pairs ``sample`` can draw (see ``mivar_jax.tasks.capacity``).
    """

    name: str
    description: str
    families: dict[str, tuple[str, ...]]
    counterfactuals: tuple[str, ...]
    metric: str
    sample: Callable[..., tuple[list[Example], dict[str, Any]]]
    capacity: Callable[..., int]

    @property
    def templates(self) -> list[tuple[int, str, str]]:
        """(template id, family name, template) for every template."""
        out = []
        for family, templates in self.families.items():
            out += [(len(out) + i, family, t) for i, t in enumerate(templates)]
        return out

    def family_of(self, template_id: int | np.integer) -> int:
        return list(self.families).index(self.templates[template_id][1])

    def select(self, templates: None | str | Sequence[str | int]) -> list[int]:
        """Template ids from ``None`` (all), a family name, or a list of family names / template ids."""
        if templates is None:
            return [t for t, _, _ in self.templates]
        if isinstance(templates, str | int):
            templates = [templates]
        ids: list[int] = []
        n_templates = len(self.templates)
        for item in templates:
            if isinstance(item, str):
                if item not in self.families:
                    raise ValueError(
                        f"{self.name}: unknown template family {item!r}; families: {sorted(self.families)}"
                    )
                ids += [t for t, fam, _ in self.templates if fam == item]
            elif isinstance(item, int | np.integer) and 0 <= item < n_templates:
                ids.append(int(item))
            else:
                raise ValueError(
                    f"{self.name}: template {item!r} is neither a family name nor an id in [0, {n_templates})"
                )
        if not ids:
            raise ValueError(f"{self.name}: no template selected")
        return sorted(set(ids))


def single_token_words(tokenizer, words: Sequence[str], prefix: str = " ") -> tuple[list[str], list[str]]:
    """Split candidate words into those that are one token (with ``prefix``) and the rest."""
    keep, drop = [], []
    for w in words:
        (keep if single_token(tokenizer, prefix + w) is not None else drop).append(w)
    return keep, drop


def draw_distinct(
    n: int, pool_size: int, draw: Callable[[], Example], what: str, *, progress: bool = False
) -> list[Example]:
    """Draw ``n`` examples with distinct (clean, corrupted) texts, or say why not.

    ``pool_size`` is the number of distinct pairs ``draw`` can return; draws are not uniform over
    them, so after ``50 n + 1000`` draws without reaching ``n`` it stops with an error rather
    than spin. ``progress`` shows a progress bar.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if n > pool_size:
        raise ValueError(f"{what} can generate at most {pool_size:,} distinct pairs here; got n = {n:,}")
    seen: set[tuple[str, str]] = set()
    out: list[Example] = []
    attempts, limit = 0, 50 * n + 1000
    with progress_bar(progress, n, f"{what}: drawing pairs") as bar:
        while len(out) < n:
            attempts += 1
            if attempts > limit:
                raise ValueError(
                    f"{what}: found only {len(out):,} distinct pairs of the {n:,} asked for after {limit:,} draws "
                    f"(the generator can make at most {pool_size:,}, but draws are not uniform over them); "
                    "ask for fewer"
                )
            ex = draw()
            key = (ex.clean, ex.corrupted)
            if key not in seen:
                seen.add(key)
                out.append(ex)
                if bar is not None:
                    bar(1)
    return out
