"""Subject–verb agreement: "The keys near the cabinet" → a plural verb (" are", " were", " have").

A singular or plural subject is followed by a distractor phrase whose own noun (the attractor)
has a random number; the model should pick the verb form that agrees with the subject.
Counterfactual ``number``: the subject's number is flipped (and, in subject relative clauses, the
clause's verb with it), so the correct and incorrect forms swap. Metric: ``logit_diff`` = mean over
the verb pairs (is/are, was/were, has/have) of logit(form agreeing with the clean subject) −
logit(the other form).
"""

from __future__ import annotations

import numpy as np

from mivar_jax.tasks.data import Example, single_token
from mivar_jax.tasks.spec import TaskSpec, draw_distinct

FAMILIES = {
    "prepositional": (
        "The {subj} near the {attr}",
        "The {subj} behind the {attr}",
        "The {subj} beside the {attr}",
        "The {subj} next to the {attr}",
        "The {subj} across from the {attr}",
    ),
    "relative": (
        "The {subj} that the {attr} {verb_attr}",
        "The {subj} whom the {attr} {verb_attr}",
        "The {subj} who {verb_subj} the {attr}",
        "The {subj} that {verb_subj} the {attr}",
    ),
}

# (singular, plural) pairs; subjects and attractors must be single tokens in both numbers.
SUBJECTS = (
    "author authors|pilot pilots|teacher teachers|doctor doctors|student students|farmer farmers|senator senators|"
    "lawyer lawyers|painter painters|driver drivers|manager managers|officer officers|writer writers|"
    "singer singers|dancer dancers|player players|nurse nurses|worker workers|friend friends|neighbor neighbors|"
    "boy boys|girl girls|man men|woman women|child children|customer customers|soldier soldiers|guest guests"
)
ATTRACTORS_PLACE = "cabinet cabinets|table tables|house houses|tree trees|car cars|window windows|door doors|building buildings|bridge bridges|desk desks"
ATTRACTORS_PERSON = "guard guards|teacher teachers|doctor doctors|student students|farmer farmers|lawyer lawyers|officer officers|pilot pilots|nurse nurses|player players"
# relative-clause verbs: (agrees with a singular noun, agrees with a plural noun)
CLAUSE_VERBS = "likes like|loves love|hates hate|knows know|sees see|meets meet|helps help|admires admire"
VERB_PAIRS = ((" is", " are"), (" was", " were"), (" has", " have"))


def _pairs(spec: str) -> list[tuple[str, str]]:
    return [tuple(p.split()) for p in spec.split("|")]  # type: ignore[misc]


def _single_token_pairs(tokenizer, pairs):
    keep = [p for p in pairs if all(single_token(tokenizer, " " + w) is not None for w in p)]
    return keep, [p for p in pairs if p not in keep]


def _candidates(tokenizer):
    """Single-token subjects, place / person attractors, clause verbs, verb pairs (and the dropped ones)."""
    subjects, d_subj = _single_token_pairs(tokenizer, _pairs(SUBJECTS))
    places, d_place = _single_token_pairs(tokenizer, _pairs(ATTRACTORS_PLACE))
    people, d_people = _single_token_pairs(tokenizer, _pairs(ATTRACTORS_PERSON))
    clause_verbs, d_verbs = _single_token_pairs(tokenizer, _pairs(CLAUSE_VERBS))
    verbs = [p for p in VERB_PAIRS if all(single_token(tokenizer, v) is not None for v in p)]
    if not subjects or not places or not people or not clause_verbs or not verbs:
        raise ValueError("sva: the tokenizer leaves no single-token subject, attractor, clause verb or verb pair")
    return (subjects, places, people, clause_verbs, verbs), (d_subj, d_place, d_people, d_verbs)


def _count(subjects, places, people, clause_verbs, templates) -> int:
    """Distinct pairs: subject × its number × attractor × its number (× clause verb), over templates."""
    return sum(
        len(subjects) * 2 * len(people if "verb" in t else places) * 2 * (len(clause_verbs) if "verb" in t else 1)
        for t in templates
    )


def _capacity(tokenizer, template_ids: list[int], counterfactual: str) -> int:
    templates = [t for i, (_, _, t) in enumerate(SPEC.templates) if i in template_ids]
    subjects, places, people, clause_verbs, _ = _candidates(tokenizer)[0]
    return _count(subjects, places, people, clause_verbs, templates)


def _sample(
    tokenizer, rng: np.random.Generator, n: int, template_ids: list[int], counterfactual: str, progress: bool = False
):
    templates = [t for i, (_, _, t) in enumerate(SPEC.templates) if i in template_ids]
    (subjects, places, people, clause_verbs, verbs), (d_subj, d_place, d_people, d_verbs) = _candidates(tokenizer)

    def attractors(t):
        return people if "verb" in t else places

    pool = _count(subjects, places, people, clause_verbs, templates)

    def draw() -> Example:
        k = int(rng.integers(len(template_ids)))
        t_id, template = template_ids[k], templates[k]
        subj = subjects[rng.integers(len(subjects))]
        attr = attractors(template)[rng.integers(len(attractors(template)))]
        verb = clause_verbs[rng.integers(len(clause_verbs))]
        plural, attr_plural = int(rng.integers(2)), int(rng.integers(2))

        def text(subject_plural: int) -> str:
            return template.format(
                subj=subj[subject_plural],
                attr=attr[attr_plural],
                verb_attr=verb[attr_plural],
                verb_subj=verb[subject_plural],
            )

        correct = tuple(v[plural] for v in verbs)
        incorrect = tuple(v[1 - plural] for v in verbs)
        return Example(text(plural), text(1 - plural), correct, incorrect, t_id, SPEC.family_of(t_id))

    examples = draw_distinct(n, pool, draw, "sva", progress=progress)
    info = {
        "pool_size": pool,
        "verb_pairs": [list(v) for v in verbs],
        "dropped_candidates": {"subjects": d_subj, "attractors": d_place + d_people, "clause_verbs": d_verbs},
    }
    return examples, info


SPEC = TaskSpec(
    name="sva",
    description="subject-verb agreement across a distractor phrase (mean logit diff of agreeing vs other verb forms)",
    families=FAMILIES,
    counterfactuals=("number",),
    metric="logit_diff",
    sample=_sample,
    capacity=_capacity,
)
