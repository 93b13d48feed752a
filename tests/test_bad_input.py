"""A dataset is checked against the model once, on the host: ids, answer sets, positions, shapes, tokenizer."""

import dataclasses
import math
import re

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models.model import tokenizer_fingerprint
from mivar_jax.tasks import check_for_model
from tests.factory import gpt2_tokenizer

V = 50257  # the tiny checkpoints' vocabulary (GPT-2's)


@pytest.fixture(scope="module")
def model(hf_dirs):
    return mv.load_model(hf_dirs["gpt2"][0])


@pytest.fixture(scope="module")
def data(model):
    d = mv.tasks.make("ioi", model, n=8, seed=0)
    assert len(set(d.attention_mask.sum(1))) > 1  # some rows are padded
    return d


def _with(data, **arrays):
    """A copy of ``data`` with some arrays replaced (``name=(index, value)`` sets one entry)."""
    out = {}
    for name, (index, value) in arrays.items():
        a = getattr(data, name).copy()
        a[index] = value
        out[name] = a
    return dataclasses.replace(data, **out)


def test_a_good_dataset_passes(model, data):
    assert check_for_model(data, model) is None
    assert check_for_model(data.with_noise(0.3), model) is None


@pytest.mark.parametrize(
    ("name", "index", "value", "message"),
    [
        ("corrupted", (0, 2), V + 100, rf"corrupted\[0, 2\] = {V + 100} is not a token id .* \[0, {V}\)"),
        ("clean", (1, 0), -3, rf"clean\[1, 0\] = -3 is not a token id .* \[0, {V}\)"),
        ("correct", (0, 0), V + 5, rf"correct\[0, 0\] = {V + 5} is not a token id .* \[0, {V}\) or -1 \(padding\)"),
        ("incorrect", (3, 0), -2, rf"incorrect\[3, 0\] = -2 is not a token id .* \[0, {V}\) or -1 \(padding\)"),
        ("attention_mask", (2, 1), 2, r"attention_mask\[2, 1\] = 2; a mask holds only 0 and 1"),
    ],
)
def test_out_of_range_entries_are_named(model, data, name, index, value, message):
    bad = _with(data, **{name: (index, value)})
    with pytest.raises(ValueError, match=message):
        check_for_model(bad, model)


def test_answer_rows_need_a_real_id(model, data):
    bad = _with(data, incorrect=((2, slice(None)), -1))
    with pytest.raises(ValueError, match=rf"incorrect row 2 has no answer id .* \[0, {V}\)"):
        check_for_model(bad, model)


def test_answer_positions_lie_on_real_tokens(model, data):
    P = data.n_positions
    with pytest.raises(ValueError, match=rf"answer_pos\[1\] = {P} lies outside \[0, {P}\)"):
        check_for_model(_with(data, answer_pos=(1, P)), model)
    with pytest.raises(ValueError, match=r"answer_pos\[0\] = -1 lies outside"):
        check_for_model(_with(data, answer_pos=(0, -1)), model)
    row = int(np.argmin(data.attention_mask.sum(1)))
    last = int(data.attention_mask[row].sum()) - 1
    with pytest.raises(
        ValueError,
        match=rf"answer_pos\[{row}\] = {last + 1} points at padding \(attention_mask\[{row}, {last + 1}\] = 0\).*"
        rf"in \[0, {last}\]",
    ):
        check_for_model(_with(data, answer_pos=(row, last + 1)), model)


def test_shapes_context_and_noise(model, data):
    bypass = dataclasses.replace(data)  # frozen: set a field without TaskData's own checks
    object.__setattr__(bypass, "answer_pos", data.answer_pos[:, None])
    with pytest.raises(ValueError, match=r"answer_pos must have shape \[N\] with N = 8; got \(8, 1\)"):
        check_for_model(bypass, model)
    bypass = dataclasses.replace(data)
    object.__setattr__(bypass, "correct", data.correct[:5])
    with pytest.raises(ValueError, match=r"correct must have shape .* N = 8; got \(5, 1\)"):
        check_for_model(bypass, model)
    with pytest.raises(ValueError, match="corrupted must hold integers, got float32"):
        check_for_model(dataclasses.replace(data, corrupted=data.corrupted.astype(np.float32)), model)
    bypass = dataclasses.replace(data)
    object.__setattr__(bypass, "noise", math.nan)
    with pytest.raises(ValueError, match="data.noise must be a finite number ≥ 0, got nan"):
        check_for_model(bypass, model)
    wide = 70  # the tiny model's context is 64
    pad = lambda a: np.pad(a, ((0, 0), (0, wide - a.shape[1])))  # noqa: E731
    long = dataclasses.replace(
        data, clean=pad(data.clean), corrupted=pad(data.corrupted), attention_mask=pad(data.attention_mask)
    )
    with pytest.raises(ValueError, match=r"clean has 70 positions, more than the context length .* \(64\)"):
        check_for_model(long, model)


def test_model_evaluation_checks_the_data(model, data):
    with pytest.raises(ValueError, match=r"corrupted\[0, 2\] = 50357"):
        mv.tasks.evaluate_model(model, _with(data, corrupted=((0, 2), V + 100)))


# ------------------------------------------------------------------------------ tokenizer identity
@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from mivar_jax.models.checkpoint import GGUFFile
    from mivar_jax.models.gguf_tokenizer import build_gguf_tokenizer

    return build_gguf_tokenizer(GGUFFile(mv.models.loading.REGISTERED["smollm2-135m"].path()), "smollm2-135m")


def test_data_records_the_tokenizer_and_keeps_it_on_disk(model, data, tmp_path):
    fp = data.info["tokenizer"]
    assert fp == model.tokenizer_fingerprint and re.fullmatch(r"[0-9a-f]{64}", fp["sha256"]) and fp["size"] == V
    # the same vocabulary read by another loader has the same fingerprint (names are for messages only)
    assert tokenizer_fingerprint(gpt2_tokenizer())["sha256"] == fp["sha256"]
    path = tmp_path / "d.npz"
    data.save(path)
    back = mv.tasks.TaskData.load(path)
    assert back.info["tokenizer"] == fp
    check_for_model(back, model)


def test_data_from_another_tokenizer_is_refused(model, smollm2_tokenizer):
    other = mv.tasks.make("ioi", smollm2_tokenizer, n=8, seed=0)
    assert other.clean.max() < V and other.correct.max() < V  # every id is in range: only identity tells
    name = model.tokenizer_fingerprint["name"]
    with pytest.raises(ValueError, match=rf"tokenizer 'smollm2-135m' .*tokenizer is '{re.escape(name)}'"):
        check_for_model(other, model)
    with pytest.raises(ValueError, match="made with the tokenizer 'smollm2-135m'"):
        mv.tasks.evaluate_model(model, other)
    with pytest.raises(ValueError, match="different tokenizers"):
        mv.tasks.TaskData.concat([other, mv.tasks.make("ioi", model, n=4)])
    # hand-built data (no fingerprint) and models without a tokenizer are not compared
    check_for_model(dataclasses.replace(other, info={k: v for k, v in other.info.items() if k != "tokenizer"}), model)
    bare = mv.load_model(model.source, tokenizer=False)
    assert bare.tokenizer_fingerprint is None
    check_for_model(other, bare)


class _CountingTokenizer:
    def __init__(self):
        self.vocab, self.calls = {"a": 0, "b": 1}, 0

    def get_vocab(self):
        self.calls += 1
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_fingerprints_are_hashed_once_per_tokenizer():
    tok = _CountingTokenizer()
    first = tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(tok) == first and tok.calls == 1
    tok.vocab["c"] = 2  # a token added: the cache notices the new size
    assert tokenizer_fingerprint(tok)["sha256"] != first["sha256"] and tok.calls == 2
    assert tokenizer_fingerprint(object()) is None


def test_attribute_and_evaluate_check_the_data_first(model, data, smollm2_tokenizer):
    """mv.attribute and mv.evaluate refuse bad data before any JAX work, with check_for_model's messages."""
    bad = _with(data, correct=((0, 0), V + 5))
    circuit = np.ones(model.graph.n_edges, bool)
    with pytest.raises(ValueError, match=rf"correct\[0, 0\] = {V + 5} is not a token id"):
        mv.attribute(model, bad, method="eap", progress=False)
    with pytest.raises(ValueError, match=rf"correct\[0, 0\] = {V + 5} is not a token id"):
        mv.evaluate(model, bad, circuit, progress=False)
    other = mv.tasks.make("ioi", smollm2_tokenizer, n=4, seed=0)
    with pytest.raises(ValueError, match="made with the tokenizer 'smollm2-135m'"):
        mv.attribute(model, other, method="eap", progress=False)
    with pytest.raises(ValueError, match="made with the tokenizer 'smollm2-135m'"):
        mv.evaluate(model, other, circuit, progress=False)
