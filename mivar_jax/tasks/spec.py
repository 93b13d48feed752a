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

    def texts(self, template_ids: Sequence[int]) -> list[str]:
        """The templates of ``template_ids``, in template order."""
        return [t for i, _, t in self.templates if i in template_ids]

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

    def draw_distinct(
        self, rng: np.random.Generator, n: int, template_ids: list[int], pool_size: int, fill: Callable, progress=False
    ) -> list[Example]:
        """Draw ``n`` examples with distinct (clean, corrupted) texts, or say why not.

        Each draw picks one of ``template_ids`` uniformly, then ``fill(template)`` (drawing the rest
        from ``rng``) gives (clean, corrupted, correct answers, incorrect answers). ``pool_size`` is the
        number of distinct pairs the draws can return; draws are not uniform over them, so after
        ``50 n + 1000`` draws without reaching ``n`` it stops with an error rather than spin.
        ``progress`` shows a progress bar.
        """
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        if n > pool_size:
            raise ValueError(f"{self.name} can generate at most {pool_size:,} distinct pairs here; got n = {n:,}")
        templates, limit = self.texts(template_ids), 50 * n + 1000
        seen: set[tuple[str, str]] = set()
        out: list[Example] = []
        with progress_bar(progress, n, f"{self.name}: drawing pairs") as bar:
            for _ in range(limit):
                k = int(rng.integers(len(template_ids)))
                ex = Example(*fill(templates[k]), template_ids[k], self.family_of(template_ids[k]))
                if (ex.clean, ex.corrupted) not in seen:
                    seen.add((ex.clean, ex.corrupted))
                    out.append(ex)
                    if bar is not None:
                        bar(1)
                    if len(out) == n:
                        return out
        raise ValueError(
            f"{self.name}: found only {len(out):,} distinct pairs of the {n:,} asked for after {limit:,} draws "
            f"(the generator can make at most {pool_size:,}, but draws are not uniform over them); ask for fewer"
        )


def single_token_words(tokenizer, words: Sequence[str | tuple[str, ...]], prefix: str = " ") -> tuple[list, list]:
    """Split candidate words into those that are one token (with ``prefix``) and the rest; a tuple of
    word forms (e.g. singular, plural) is kept only if every form is one token."""
    keep, drop = [], []
    for w in words:
        forms = (w,) if isinstance(w, str) else w
        (keep if all(single_token(tokenizer, prefix + f) is not None for f in forms) else drop).append(w)
    return keep, drop


def pick(rng: np.random.Generator, items: Sequence):
    """One of ``items``, uniformly."""
    return items[rng.integers(len(items))]
