"""The main job until the study runner lands: load smollm2-135m, show its graph and its IOI behaviour.

python -m mivar_jax.demo [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mivar_jax as mv

# (prompt, indirect object, subject): the model should prefer the indirect object.
IOI_PROMPTS = [
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
    ("When Tom and James went to the park, James gave a ball to", " Tom", " James"),
    ("After Sarah and Anna went to the school, Anna handed a book to", " Sarah", " Anna"),
    ("Then, David and Paul had a long argument. Afterwards Paul said to", " David", " Paul"),
    ("While Lisa and Emma were working at the office, Emma passed a note to", " Lisa", " Emma"),
    ("When Michael and Robert went to the restaurant, Robert gave a present to", " Michael", " Robert"),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default="smollm2-135m", help="registered name, HF directory, GGUF file or cached hub name"
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = mv.load_model(args.model)
    print(f"loaded {model} in {time.perf_counter() - t0:.1f} s")
    g = model.graph
    print(f"graph: {g.n_src} source nodes, {g.n_dst} destination slots, {g.n_edges:,} edges")

    batch = model.tokenize([p for p, _, _ in IOI_PROMPTS])
    t0 = time.perf_counter()
    logits = np.asarray(model(batch.tokens, batch.attention_mask, logit_positions=batch.last))
    print(f"forward pass on {len(IOI_PROMPTS)} IOI prompts: {time.perf_counter() - t0:.1f} s (includes compilation)")
    diffs = []
    for (prompt, io, s), row in zip(IOI_PROMPTS, logits, strict=True):
        diff = row[model.token_id(io)] - row[model.token_id(s)]
        diffs.append(diff)
        top = model.tokenizer.decode([int(row.argmax())])
        print(f"  logit({io!s:>9}) - logit({s!s:>8}) = {diff:+6.2f}   top-1 {top!r:10}  | {prompt}")
    diffs = np.asarray(diffs)
    print(
        f"mean IOI logit difference: {diffs.mean():+.3f} (std {diffs.std():.3f}); {int((diffs > 0).sum())}/{len(diffs)} prefer the indirect object"
    )


if __name__ == "__main__":
    main()
