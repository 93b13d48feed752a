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

from mivar_jax.tasks.spec import TaskSpec, pick, single_token_words

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


def _candidates(tokenizer):
    """Single-token subjects, place / person attractors, clause verbs, verb pairs (and the dropped ones)."""
    pairs = [_pairs(s) for s in (SUBJECTS, ATTRACTORS_PLACE, ATTRACTORS_PERSON, CLAUSE_VERBS)]
    kept, dropped = zip(*(single_token_words(tokenizer, p) for p in pairs), strict=True)
    subjects, places, people, clause_verbs = kept
    verbs = single_token_words(tokenizer, VERB_PAIRS, prefix="")[0]
    if not subjects or not places or not people or not clause_verbs or not verbs:
        raise ValueError("sva: the tokenizer leaves no single-token subject, attractor, clause verb or verb pair")
    return (subjects, places, people, clause_verbs, verbs), dropped


def _count(subjects, places, people, clause_verbs, templates) -> int:
    """Distinct pairs: subject × its number × attractor × its number (× clause verb), over templates."""
    return sum(
        len(subjects) * 2 * len(people if "verb" in t else places) * 2 * (len(clause_verbs) if "verb" in t else 1)
        for t in templates
    )


def _capacity(tokenizer, template_ids: list[int], counterfactual: str) -> int:
    subjects, places, people, clause_verbs, _ = _candidates(tokenizer)[0]
    return _count(subjects, places, people, clause_verbs, SPEC.texts(template_ids))


def _sample(
    tokenizer, rng: np.random.Generator, n: int, template_ids: list[int], counterfactual: str, progress: bool = False
):
    (subjects, places, people, clause_verbs, verbs), (d_subj, d_place, d_people, d_verbs) = _candidates(tokenizer)
    pool = _count(subjects, places, people, clause_verbs, SPEC.texts(template_ids))

    def fill(template: str):
        subj = pick(rng, subjects)
        attr = pick(rng, people if "verb" in template else places)
        verb = pick(rng, clause_verbs)
        plural, attr_plural = int(rng.integers(2)), int(rng.integers(2))

        def text(s: int) -> str:  # s: the subject's number (0 singular, 1 plural)
            return template.format(subj=subj[s], attr=attr[attr_plural], verb_attr=verb[attr_plural], verb_subj=verb[s])

        return text(plural), text(1 - plural), tuple(v[plural] for v in verbs), tuple(v[1 - plural] for v in verbs)

    info = {
        "pool_size": pool,
        "verb_pairs": [list(v) for v in verbs],
        "dropped_candidates": {"subjects": d_subj, "attractors": d_place + d_people, "clause_verbs": d_verbs},
    }
    return SPEC.draw_distinct(rng, n, template_ids, pool, fill, progress), info


SPEC = TaskSpec(
    name="sva",
    description="subject-verb agreement across a distractor phrase (mean logit diff of agreeing vs other verb forms)",
    families=FAMILIES,
    counterfactuals=("number",),
    metric="logit_diff",
    sample=_sample,
    capacity=_capacity,
)
