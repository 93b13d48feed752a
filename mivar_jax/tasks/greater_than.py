"""Greater-Than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" → a year > 32.

Two variants, chosen by how the tokenizer writes years:
- ``two-digit`` (GPT-2): " 1732" is " 17" + "32". The answer is the two-digit token; YY ∈ [02, 98].
  Metric ``prob_diff`` = Σ p(YY' > YY) − Σ p(YY' ≤ YY) over the tokens "00" … "99".
- ``digit-wise`` (SmolLM2, Llama 3 …): " 1732" is split into single digits. The answer is the tens
  digit t of YY, with t ∈ [1, 8]. Metric ``prob_diff`` = Σ_{d > t} p(d) − Σ_{d < t} p(d) over the
  digit tokens "0" … "9": the tens digit alone decides "greater" only when it differs from t, so
  the decade of YY itself counts on neither side.
A tokenizer that does neither gets an error naming the property.

Counterfactual ``01``: the start year becomes 1701, whose decade (and two-digit token) is the
minimum, so no answer is "greater" by the start year any more.
"""

from __future__ import annotations

import numpy as np

from mivar_jax.tasks.data import encode, single_token
from mivar_jax.tasks.spec import TaskSpec, pick, single_token_words

FAMILIES = {
    "lasted": (
        "The {noun} lasted from the year 17{YY} to the year 17",
        "The {noun} went on from the year 17{YY} until the year 17",
        "The {noun} ran from the year 17{YY} to the year 17",
    ),
    "started-ended": (
        "The {noun} started in the year 17{YY} and ended in the year 17",
        "The {noun} began in the year 17{YY} and was over by the year 17",
        "The {noun} started in 17{YY} and ended in 17",
    ),
}

NOUNS = (
    "war conflict expedition project journey contract treaty empire dynasty reign marriage voyage campaign "
    "festival trial strike siege revolution alliance partnership mission program tour occupation crisis"
).split()


def variant(tokenizer) -> str:
    """``two-digit`` or ``digit-wise``, or a ValueError naming what the tokenizer does instead."""
    two_digit = all(single_token(tokenizer, f"{d:02d}") is not None for d in range(100))
    year = encode(tokenizer, " 1732")
    if two_digit and year == encode(tokenizer, " 17") + encode(tokenizer, "32") and len(year) == 2:
        return "two-digit"
    digits = [single_token(tokenizer, str(d)) for d in range(10)]
    if None not in digits and year[-4:] == [digits[1], digits[7], digits[3], digits[2]]:
        return "digit-wise"
    pieces = [tokenizer.decode([t]) for t in year]
    raise ValueError(
        "greater-than needs a tokenizer that writes a year either as ' 17' + a two-digit token or as single "
        f"digits; this one writes ' 1732' as {pieces}"
    )


def _candidates(tokenizer):
    """(variant, single-token nouns, start years YY), the dropped nouns; or a ValueError."""
    kind = variant(tokenizer)
    nouns, dropped = single_token_words(tokenizer, NOUNS)
    if not nouns:
        raise ValueError("greater-than: no candidate noun is a single token for this tokenizer")
    years = list(range(2, 99)) if kind == "two-digit" else list(range(10, 90))
    return (kind, nouns, years), dropped


def _capacity(tokenizer, template_ids: list[int], counterfactual: str) -> int:
    """Distinct pairs: template × noun × start year (the corrupted prompt follows from the clean one)."""
    _, nouns, years = _candidates(tokenizer)[0]
    return len(template_ids) * len(nouns) * len(years)


def _sample(
    tokenizer, rng: np.random.Generator, n: int, template_ids: list[int], counterfactual: str, progress: bool = False
):
    (kind, nouns, years), dropped = _candidates(tokenizer)
    pool = len(template_ids) * len(nouns) * len(years)

    def fill(template: str):
        noun, yy = pick(rng, nouns), pick(rng, years)
        if kind == "two-digit":
            correct, incorrect = [f"{d:02d}" for d in range(yy + 1, 100)], [f"{d:02d}" for d in range(yy + 1)]
        else:  # the tens digit: YY's own decade counts on neither side
            correct, incorrect = [str(d) for d in range(yy // 10 + 1, 10)], [str(d) for d in range(yy // 10)]
        clean, corrupted = template.format(noun=noun, YY=f"{yy:02d}"), template.format(noun=noun, YY="01")
        return clean, corrupted, tuple(correct), tuple(incorrect)

    examples = SPEC.draw_distinct(rng, n, template_ids, pool, fill, progress)
    return examples, {"variant": kind, "pool_size": pool, "dropped_candidates": {"nouns": dropped}}


SPEC = TaskSpec(
    name="greater-than",
    description="Greater-Than: probability of years after the start year minus years up to it",
    families=FAMILIES,
    counterfactuals=("01",),
    metric="prob_diff",
    sample=_sample,
    capacity=_capacity,
)
