"""TaskData: clean/corrupted prompt pairs as padded arrays, ready for jit.

Conventions: prompts are right-padded; a pair's clean and corrupted prompts have the same
token length (pairs that do not are dropped when built, and counted); ``answer_pos`` is the last
real token, whose next-token logits the metric reads; answer sets are int32 [N, A] padded with -1.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import numbers
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from mivar_jax._io import atomic_write_bytes
from mivar_jax._progress import progress_bar
from mivar_jax.models.model import check_token_ids, pad_token_id

FORMAT_VERSION = 1
_ARRAYS = ("clean", "corrupted", "attention_mask", "answer_pos", "correct", "incorrect", "template", "family", "uid")
_META = ("task", "metric", "counterfactual", "clean_text", "corrupted_text", "noise", "noise_seed", "info")


@dataclasses.dataclass(frozen=True)
class Example:
    """One generated pair before tokenisation. Answers are strings that must be single tokens."""

    clean: str
    corrupted: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]
    template: int
    family: int


class TaskBatch(NamedTuple):
    """The arrays of a TaskData (or of some of its rows) as a pytree of device arrays: what jitted
    code takes. ``uid`` keys the counterfactual noise."""

    clean: jnp.ndarray
    corrupted: jnp.ndarray
    attention_mask: jnp.ndarray
    answer_pos: jnp.ndarray
    correct: jnp.ndarray
    incorrect: jnp.ndarray
    uid: jnp.ndarray

    @property
    def differs(self) -> jnp.ndarray:
        """[N, P] bool: real positions where the corrupted prompt differs from the clean one."""
        return (self.clean != self.corrupted) & (self.attention_mask > 0)


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """A task's dataset: N clean/corrupted pairs with answers, template ids and the metric's name.

    Arrays: ``clean``, ``corrupted``, ``attention_mask`` [N, P] int32; ``answer_pos`` [N];
    ``correct`` [N, Ac], ``incorrect`` [N, Ai] token ids (-1 = padding); ``template``, ``family`` [N];
    ``uid`` [N] stable example ids (they key the counterfactual noise, so a slice keeps its noise).
    ``noise`` is the counterfactual-noise amplitude σ, finite and ≥ 0 (see ``mivar_jax.tasks.noise``).
    ``info["tokenizer"]``: the fingerprint of the tokenizer that made the ids (``{"name", "sha256",
    "size"}``, see ``mivar_jax.models.model.tokenizer_fingerprint``); ``check_for_model`` compares it
    with the model's. Hand-built data, and files written before fingerprints, may lack it.
    """

    task: str
    metric: str
    counterfactual: str
    clean: np.ndarray
    corrupted: np.ndarray
    attention_mask: np.ndarray
    answer_pos: np.ndarray
    correct: np.ndarray
    incorrect: np.ndarray
    template: np.ndarray
    family: np.ndarray
    uid: np.ndarray
    clean_text: tuple[str, ...]
    corrupted_text: tuple[str, ...]
    noise: float = 0.0
    noise_seed: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.clean_text)
        for name in _ARRAYS:
            a = getattr(self, name)
            if a.shape[0] != n:
                raise ValueError(f"TaskData.{name} has {a.shape[0]} rows, expected {n}")
        if self.clean.shape != self.corrupted.shape or self.clean.shape != self.attention_mask.shape:
            raise ValueError("clean, corrupted and attention_mask must have the same shape [N, P]")
        check_noise(self.noise)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.clean_text)

    @property
    def n_positions(self) -> int:
        return int(self.clean.shape[1])

    def batch(self, rows: np.ndarray | None = None) -> TaskBatch:
        """Device arrays of all rows (or of ``rows``, at the full padded width) for jitted code."""
        take = (lambda a: a) if rows is None else (lambda a: a[rows])
        return TaskBatch(*(jnp.asarray(take(getattr(self, f))) for f in TaskBatch._fields))

    def batches(self, batch_size: int, devices: int = 1, rows: np.ndarray | None = None):
        """Yield ``(TaskBatch, real_rows)`` over all rows (or ``rows``): ``batch_size`` rows per
        device, ``devices`` blocks per batch, every batch of one shape so one compilation serves
        them. The per-device size is at most the number of rows and does not depend on
        ``devices``: every device computes on blocks of the shape one device would (the basis of
        identical results on any number of devices). The last batch is filled up by repeating its
        last row; ``real_rows`` are the dataset rows of its first ``len(real_rows)`` entries."""
        if batch_size < 1 or devices < 1:
            raise ValueError(f"batch_size and devices must be ≥ 1, got {batch_size}, {devices}")
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        size = min(batch_size, len(rows)) * devices
        for start in range(0, len(rows), size):
            real = rows[start : start + size]
            yield self.batch(np.concatenate([real, np.full(size - len(real), real[-1])])), real

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> TaskData:
        """Rows ``index`` (an int, slice, index array or boolean mask), padding trimmed to fit."""
        rows = np.atleast_1d(np.arange(len(self))[index])
        if rows.size == 0:
            raise IndexError("selection is empty")
        width = int(self.attention_mask[rows].sum(1).max())
        arrays = {name: getattr(self, name)[rows] for name in _ARRAYS}
        for name in ("clean", "corrupted", "attention_mask"):
            arrays[name] = arrays[name][:, :width]
        return dataclasses.replace(
            self,
            **arrays,
            clean_text=tuple(self.clean_text[i] for i in rows),
            corrupted_text=tuple(self.corrupted_text[i] for i in rows),
        )

    def pad(self, width: int) -> TaskData:
        """The same inputs right-padded to ``width`` positions (≥ ``n_positions``): datasets of one
        width share compiled kernels; per-input results do not depend on the padding."""
        if width < self.n_positions:
            raise ValueError(f"cannot pad {self.n_positions} positions to {width}")
        extra = ((0, 0), (0, width - self.n_positions))
        pad_id = self.info.get("pad_id", 0)
        return dataclasses.replace(
            self,
            clean=np.pad(self.clean, extra, constant_values=pad_id),
            corrupted=np.pad(self.corrupted, extra, constant_values=pad_id),
            attention_mask=np.pad(self.attention_mask, extra, constant_values=0),
        )

    def with_noise(self, sigma: float, seed: int = 0) -> TaskData:
        """The same pairs with counterfactual noise of amplitude ``sigma`` (keyed by ``seed``)."""
        return dataclasses.replace(self, noise=check_noise(sigma), noise_seed=int(seed))

    @staticmethod
    def concat(parts: Sequence[TaskData]) -> TaskData:
        """Concatenate datasets of one task and metric (re-padded to the longest prompt)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            for attr in ("task", "metric", "noise", "noise_seed"):
                if getattr(p, attr) != getattr(first, attr):
                    raise ValueError(
                        f"cannot concatenate datasets with different {attr}: {getattr(first, attr)!r} vs {getattr(p, attr)!r}"
                    )
        fingerprints = [fp for p in parts if isinstance(fp := p.info.get("tokenizer"), dict)]
        digests = {fp["sha256"]: str(fp.get("name", "?")) for fp in fingerprints if fp.get("sha256") is not None}
        if len(digests) > 1:
            raise ValueError(f"cannot concatenate datasets made with different tokenizers: {sorted(digests.values())}")
        pad_id = first.info.get("pad_id", 0)  # padding of the prompts to the widest part (answer sets: -1)
        fill = {"clean": pad_id, "corrupted": pad_id, "attention_mask": 0, "correct": -1, "incorrect": -1}

        def joined(name):
            arrays = [getattr(p, name) for p in parts]
            if name in fill:
                cols = max(a.shape[1] for a in arrays)
                arrays = [np.pad(a, ((0, 0), (0, cols - a.shape[1])), constant_values=fill[name]) for a in arrays]
            return np.concatenate(arrays)

        return dataclasses.replace(
            first,
            **{name: joined(name) for name in _ARRAYS},
            clean_text=sum((p.clean_text for p in parts), ()),
            corrupted_text=sum((p.corrupted_text for p in parts), ()),
            counterfactual=first.counterfactual if len({p.counterfactual for p in parts}) == 1 else "mixed",
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write one ``.npz`` file (arrays + JSON metadata), atomically."""
        meta = {"format_version": FORMAT_VERSION} | {name: getattr(self, name) for name in _META}
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **{name: getattr(self, name) for name in _ARRAYS})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskData:
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {name: f[name] for name in _ARRAYS}
        except KeyError as err:
            raise ValueError(f"{path}: not a TaskData file (missing {err})") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path}: not a readable TaskData file ({type(err).__name__}: {err})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: TaskData format {meta.get('format_version')}, this version reads {FORMAT_VERSION}"
            )
        texts = {name: tuple(meta[name]) for name in ("clean_text", "corrupted_text")}
        return cls(**({name: meta[name] for name in _META} | texts), **arrays)

    def __repr__(self) -> str:
        return (
            f"TaskData({self.task!r}, n={len(self)}, positions={self.n_positions}, metric={self.metric}, "
            f"counterfactual={self.counterfactual}, templates={len(np.unique(self.template))}, noise={self.noise})"
        )


def check_noise(noise: Any, what: str = "noise amplitude") -> float:
    """``noise`` as a float, or a ValueError unless it is a finite real number ≥ 0."""
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, got {noise!r}")
    return float(noise)


def check_for_model(data: TaskData, model) -> None:
    """Check ``data`` against ``model`` on the host, before any JAX work; raise a ValueError otherwise.

    Checked: shapes ([N, P] prompts and mask, [N] answer positions, [N, Ac] / [N, Ai] answer sets);
    ``clean`` / ``corrupted`` ids in [0, V) (V = ``model.config.vocab_size``) and P within the
    context (``model.check_batch``); ``correct`` / ``incorrect`` ids in [0, V) or -1 (padding), at
    least one real id per row; ``answer_pos`` in [0, P) and on a real token of the mask; the
    noise; the tokenizer: data whose ``info["tokenizer"]`` fingerprint differs from the model
    tokenizer's is refused. A model without a tokenizer, or data without a fingerprint (hand-built,
    files written before fingerprints), skips that last check. Errors name the array, the first
    offending row (and column), the value and the allowed range.
    """
    V, name = model.config.vocab_size, model.config.name
    n = len(data)
    if n == 0:
        raise ValueError("empty dataset")
    shapes = {a: np.shape(getattr(data, a)) for a in ("clean", "corrupted", "attention_mask")}
    if len(set(shapes.values())) != 1 or len(shapes["clean"]) != 2 or shapes["clean"][0] != n:
        raise ValueError(f"clean, corrupted and attention_mask must share one shape [N={n}, P]; got {shapes}")
    for a in ("answer_pos", "correct", "incorrect"):
        arr = np.asarray(getattr(data, a))
        want = 1 if a == "answer_pos" else 2
        if arr.ndim != want or arr.shape[0] != n or (want == 2 and arr.shape[1] == 0):
            form = "[N]" if want == 1 else "[N, A] with A ≥ 1"
            raise ValueError(f"{a} must have shape {form} with N = {n}; got {arr.shape}")
    for a in ("clean", "corrupted", "attention_mask", "answer_pos", "correct", "incorrect"):
        dtype = np.asarray(getattr(data, a)).dtype
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"{a} must hold integers, got {dtype}")
    check_noise(data.noise, "data.noise")

    theirs, ours = data.info.get("tokenizer"), getattr(model, "tokenizer_fingerprint", None)
    if isinstance(theirs, dict) and theirs.get("sha256") and ours is not None and ours["sha256"] != theirs["sha256"]:
        raise ValueError(
            f"this {data.task} dataset was made with the tokenizer {theirs.get('name', '?')!r} "
            f"(vocabulary sha256 {theirs['sha256'][:12]}…, {theirs.get('size', '?')} tokens), but the model {name}'s "
            f"tokenizer is {ours['name']!r} ({ours['sha256'][:12]}…, {ours['size']} tokens): the data's ids would "
            "mean other tokens. Make the data with the model's tokenizer (or, if the ids are known to agree, "
            "drop data.info['tokenizer'])"
        )

    model.check_batch(data.clean, data.attention_mask, names=("clean", "attention_mask"))  # clean's ids too
    check_token_ids(data.corrupted, V, "corrupted", name)
    mask = np.asarray(data.attention_mask)
    for a in ("correct", "incorrect"):
        ids = np.asarray(getattr(data, a))
        check_token_ids(ids, V, a, name, padding=True)
        empty = np.nonzero((ids < 0).all(1))[0]
        if empty.size:
            raise ValueError(
                f"{a} row {empty[0]} has no answer id (only -1 padding); every row needs at least one id in [0, {V}) "
                f"({empty.size} such rows)"
            )
    pos, P = np.asarray(data.answer_pos), mask.shape[1]
    outside = np.nonzero((pos < 0) | (pos >= P))[0]
    if outside.size:
        r = outside[0]
        raise ValueError(f"answer_pos[{r}] = {pos[r]} lies outside [0, {P}) (P = the prompts' padded width)")
    on_padding = np.nonzero(mask[np.arange(n), pos] == 0)[0]
    if on_padding.size:
        r = on_padding[0]
        real = np.nonzero(mask[r])[0]
        raise ValueError(
            f"answer_pos[{r}] = {pos[r]} points at padding (attention_mask[{r}, {pos[r]}] = 0); it must be a real "
            f"token of row {r}, in [{real.min()}, {real.max()}]"
        )


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def single_token(tokenizer, text: str) -> int | None:
    ids = encode(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def build(
    examples: Sequence[Example],
    tokenizer,
    *,
    task: str,
    metric: str,
    counterfactual: str,
    seed: int,
    info: dict[str, Any],
    prepend_bos: bool = False,
    progress: bool = False,
) -> tuple[TaskData, Counter]:
    """Tokenise and pad examples; drop (and count) pairs whose clean and corrupted lengths differ.
    ``progress`` shows a progress bar."""
    dropped: Counter = Counter()
    if prepend_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    bos = [int(tokenizer.bos_token_id)] if prepend_bos else []

    @functools.cache
    def answer_id(text: str) -> int:
        tid = single_token(tokenizer, text)
        if tid is None:
            raise ValueError(f"answer {text!r} is {len(encode(tokenizer, text))} tokens, not one")
        return tid

    rows = []
    with progress_bar(progress, len(examples), f"{task}: tokenizing") as bar:
        for ex in examples:
            if bar is not None:
                bar(1)
            clean_ids, corrupt_ids = bos + encode(tokenizer, ex.clean), bos + encode(tokenizer, ex.corrupted)
            if len(clean_ids) != len(corrupt_ids):
                dropped["clean/corrupted token lengths differ"] += 1
                continue
            if clean_ids == corrupt_ids:
                dropped["corrupted prompt identical to clean"] += 1
                continue
            rows.append(
                (ex, clean_ids, corrupt_ids, [answer_id(a) for a in ex.correct], [answer_id(a) for a in ex.incorrect])
            )
    if not rows:
        raise ValueError(f"no usable {task} pair: {dict(dropped)}")

    n, width = len(rows), max(len(r[1]) for r in rows)
    n_correct, n_incorrect = max(len(r[3]) for r in rows), max(len(r[4]) for r in rows)
    pad_id = pad_token_id(tokenizer)
    clean = np.full((n, width), pad_id, np.int32)
    corrupted = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    correct = np.full((n, n_correct), -1, np.int32)
    incorrect = np.full((n, n_incorrect), -1, np.int32)
    for i, (_, c, k, good, bad) in enumerate(rows):
        clean[i, : len(c)], corrupted[i, : len(k)], mask[i, : len(c)] = c, k, 1
        correct[i, : len(good)], incorrect[i, : len(bad)] = good, bad
    info = {**info, "dropped": dict(dropped), "pad_id": pad_id, "prepend_bos": prepend_bos}
    data = TaskData(
        task=task,
        metric=metric,
        counterfactual=counterfactual,
        clean=clean,
        corrupted=corrupted,
        attention_mask=mask,
        answer_pos=mask.sum(1).astype(np.int32) - 1,
        correct=correct,
        incorrect=incorrect,
        template=np.array([r[0].template for r in rows], np.int32),
        family=np.array([r[0].family for r in rows], np.int32),
        uid=(np.int64(seed) * 1_000_003 + np.arange(len(rows))) % (2**31 - 1),
        clean_text=tuple(r[0].clean for r in rows),
        corrupted_text=tuple(r[0].corrupted for r in rows),
        info=info,
    )
    return data, dropped
