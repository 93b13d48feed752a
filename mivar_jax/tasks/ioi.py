"""Indirect object identification (Wang et al. 2022 style).

A prompt introduces two names, the subject S is mentioned again (S2), and the model should
complete with the other name, the indirect object IO: "When Mary and John went to the store,
John gave a drink to" → " Mary". Both first-mention orders appear (ABBA: IO first; BABA: S first).

Counterfactuals (the S2 slot is the only change, so clean and corrupted prompts align):
``abc`` replaces S2 by a third name C; ``abb`` replaces S2 by the IO name.
Metric: ``logit_diff`` = logit(IO) − logit(S), on clean and corrupted prompts alike.
"""

from __future__ import annotations

import numpy as np

from mivar_jax.tasks.spec import TaskSpec, pick, single_token_words

# {X} and {Y} are the first mentions (ABBA: X = IO; BABA: X = S); {S2} is the repeated subject.
FAMILIES = {
    "transfer": (
        "Then, {X} and {Y} went to the {place}. {S2} gave a {object} to",
        "When {X} and {Y} got a {object} at the {place}, {S2} decided to give it to",
        "When {X} and {Y} went to the {place}, {S2} gave the {object} to",
        "After {X} and {Y} went to the {place}, {S2} handed a {object} to",
        "While {X} and {Y} were working at the {place}, {S2} gave a {object} to",
        "Then, {X} and {Y} had a lot of fun at the {place}. {S2} gave a {object} to",
        "The {place} that {X} and {Y} went to had a {object}. {S2} gave it to",
        "Friends {X} and {Y} found a {object} at the {place}. {S2} gave it to",
    ),
    "communication": (
        "Then, {X} and {Y} had a long argument. Afterwards {S2} said to",
        "When {X} and {Y} met at the {place}, {S2} said hello to",
        "After the lunch, {X} and {Y} went to the {place}. {S2} wrote a letter to",
        "Then, {X} and {Y} were thinking about going to the {place}. {S2} wanted to talk to",
        "While {X} and {Y} were walking to the {place}, {S2} waved to",
        "At the {place}, {X} and {Y} had a quick chat. Then {S2} whispered to",
        "Later, {X} and {Y} were sitting in the {place}. {S2} sent a message to",
        "Once {X} and {Y} arrived at the {place}, {S2} called out to",
    ),
}

NAMES = (
    "Mary John Tom James Sarah Anna David Paul Lisa Emma Michael Robert Daniel Jessica Laura Kevin Mark Steven "
    "Andrew Rachel Kate Amy Adam Brian Chris Eric Jason Jennifer Karen Linda Nancy Patrick Peter Richard Ryan Scott "
    "Susan Thomas William Alice Bob Charles George Henry Jack Jane Joe Kelly Lucy Martin Matt Mike Nick Rose Sam "
    "Tim Victoria Alex Ben Dan Frank Grace Helen Ian Joseph Justin Kim Leo Max Oliver Sophie Anne Brandon Carl "
    "Diana Edward Fred Gary Harry Jacob Jeff Josh Kyle Lauren Louis Megan Nathan Rebecca Sean Simon Tony"
).split()
PLACES = (
    "store garden restaurant school hospital office park station house church beach library market museum "
    "kitchen bar hotel cafe airport zoo river lake forest theater gym mall farm"
).split()
OBJECTS = (
    "drink ring book bone kiss basketball computer necklace snack apple ball letter gift key bag hat cake pen "
    "flower card phone ticket coin watch toy"
).split()


def _candidates(tokenizer):
    """Single-token names, places and objects (and the dropped ones), or a ValueError."""
    kept, dropped = zip(*(single_token_words(tokenizer, w) for w in (NAMES, PLACES, OBJECTS)), strict=True)
    names, places, objects = kept
    if len(names) < 3:
        raise ValueError(f"ioi: only {len(names)} candidate names are single tokens for this tokenizer; 3 are needed")
    if not places or not objects:
        raise ValueError("ioi: no candidate place or object is a single token for this tokenizer")
    return (names, places, objects), dropped


def _count(names, places, objects, templates, counterfactual) -> int:
    """Distinct pairs: both orders × IO × S × C (abc: any third name; abb: C = IO) × the template's place
    and object, summed over templates."""
    combos = 2 * len(names) * (len(names) - 1) * (len(names) - 2 if counterfactual == "abc" else 1)
    return sum(
        combos * (len(places) if "{place}" in t else 1) * (len(objects) if "{object}" in t else 1) for t in templates
    )


def _capacity(tokenizer, template_ids: list[int], counterfactual: str) -> int:
    return _count(*_candidates(tokenizer)[0], SPEC.texts(template_ids), counterfactual)


def _sample(
    tokenizer, rng: np.random.Generator, n: int, template_ids: list[int], counterfactual: str, progress: bool = False
):
    (names, places, objects), dropped = _candidates(tokenizer)
    pool = _count(names, places, objects, SPEC.texts(template_ids), counterfactual)

    def fill(template: str):
        io, s, c = (names[i] for i in rng.choice(len(names), size=3, replace=False))
        x, y = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA or BABA
        words = {"X": x, "Y": y, "place": pick(rng, places), "object": pick(rng, objects)}
        corrupted = template.format(S2=c if counterfactual == "abc" else io, **words)
        return template.format(S2=s, **words), corrupted, (" " + io,), (" " + s,)

    info = {
        "pool_size": pool,
        "candidates": {"names": len(names), "places": len(places), "objects": len(objects)},
        "dropped_candidates": dict(zip(("names", "places", "objects"), dropped, strict=True)),
    }
    return SPEC.draw_distinct(rng, n, template_ids, pool, fill, progress), info


SPEC = TaskSpec(
    name="ioi",
    description="indirect object identification: complete with the name not repeated (logit(IO) − logit(S))",
    families=FAMILIES,
    counterfactuals=("abc", "abb"),
    metric="logit_diff",
    sample=_sample,
    capacity=_capacity,
)
