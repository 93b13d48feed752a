"""Task generators on two real tokenizers (GPT-2's official files, SmolLM2's GGUF vocabulary)."""

import dataclasses
import io
import math
import re
import sys

import numpy as np
import pytest
import scipy.special
import scipy.stats

import mivar_jax as mv
from mivar_jax.tasks import data as task_data
from mivar_jax.tasks import greater_than, ioi, sva
from tests.factory import gpt2_tokenizer

CASES = [("ioi", "abc"), ("ioi", "abb"), ("sva", "number"), ("greater-than", "01")]


@pytest.fixture(scope="module")
def tokenizers():
    from mivar_jax.models.checkpoint import GGUFFile
    from mivar_jax.models.gguf_tokenizer import build_gguf_tokenizer

    smol = build_gguf_tokenizer(GGUFFile(mv.models.loading.REGISTERED["smollm2-135m"].path()))
    return {"gpt2": gpt2_tokenizer(), "smollm2": smol}


def _decode(tok, ids):
    return tok.decode([int(i) for i in ids])


@pytest.mark.parametrize("tok_name", ["gpt2", "smollm2"])
@pytest.mark.parametrize(("task", "cf"), CASES)
def test_pairs_are_aligned_and_answers_single_tokens(tokenizers, tok_name, task, cf):
    tok = tokenizers[tok_name]
    d = mv.tasks.make(task, tok, n=60, seed=3, counterfactual=cf)
    assert len(d) == 60 and d.counterfactual == cf
    lengths = d.attention_mask.sum(1)
    np.testing.assert_array_equal(d.answer_pos, lengths - 1)
    for i in range(len(d)):
        n = lengths[i]
        assert _decode(tok, d.clean[i, :n]) == d.clean_text[i]
        assert _decode(tok, d.corrupted[i, :n]) == d.corrupted_text[i]
        assert np.all(d.attention_mask[i, n:] == 0)
        good, bad = d.correct[i][d.correct[i] >= 0], d.incorrect[i][d.incorrect[i] >= 0]
        assert len(good) and len(bad) and not set(good) & set(bad)
        for t in np.concatenate([good, bad]):  # single tokens that re-encode to themselves
            assert tok.encode(_decode(tok, [t]), add_special_tokens=False) == [int(t)]
    assert d.batch().differs.any(1).all()


@pytest.mark.parametrize("tok_name", ["gpt2", "smollm2"])
def test_ioi_counterfactuals_change_only_the_second_subject(tokenizers, tok_name):
    tok = tokenizers[tok_name]
    for cf in ("abc", "abb"):
        d = mv.tasks.make("ioi", tok, n=80, seed=0, counterfactual=cf)
        orders = set()
        for i in range(len(d)):
            diff = np.nonzero(d.clean[i] != d.corrupted[i])[0]
            assert len(diff) == 1
            io, s = d.correct[i, 0], d.incorrect[i, 0]
            assert d.clean[i, diff[0]] == s  # S2
            new = d.corrupted[i, diff[0]]
            assert (new == io) if cf == "abb" else (new not in (io, s))
            first_io, first_s = (np.nonzero(d.clean[i] == x)[0][0] for x in (io, s))
            orders.add("ABBA" if first_io < first_s else "BABA")
        assert orders == {"ABBA", "BABA"}


def test_ioi_has_fifteen_templates_in_two_families(tokenizers):
    assert len(ioi.SPEC.templates) >= 15 and len(ioi.SPEC.families) >= 2
    d = mv.tasks.make("ioi", tokenizers["gpt2"], n=400, seed=1)
    assert set(d.template) == set(range(len(ioi.SPEC.templates)))
    for t, f in zip(d.template, d.family, strict=True):
        assert ioi.SPEC.family_of(t) == f
    only = mv.tasks.make("ioi", tokenizers["gpt2"], n=50, seed=1, templates="communication")
    assert set(only.family) == {1} and set(only.template) <= set(range(8, 16))
    by_id = mv.tasks.make("ioi", tokenizers["gpt2"], n=20, seed=1, templates=[0, 9])
    assert set(by_id.template) <= {0, 9}


@pytest.mark.parametrize("tok_name", ["gpt2", "smollm2"])
def test_sva_flips_the_subject_number(tokenizers, tok_name):
    tok = tokenizers[tok_name]
    d = mv.tasks.make("sva", tok, n=80, seed=2)
    singular_verbs = {tok.encode(v, add_special_tokens=False)[0] for v in (" is", " was", " has")}
    for i in range(len(d)):
        diff = np.nonzero(d.clean[i] != d.corrupted[i])[0]
        assert 1 <= len(diff) <= 2  # the subject (and a subject-relative clause's verb)
        clean_singular = set(d.correct[i][d.correct[i] >= 0]) <= singular_verbs
        words = d.clean_text[i].split()
        cwords = d.corrupted_text[i].split()
        assert words[1] != cwords[1]  # "The {subject} …"
        # the plural form is the longer / irregular one: the singular verb set goes with the singular noun
        assert (len(words[1]) < len(cwords[1]) or words[1] in ("man", "woman", "child")) == clean_singular
    assert set(d.family) == {0, 1}


@pytest.mark.parametrize("tok_name", ["gpt2", "smollm2"])
def test_greater_than_variant_and_answer_sets(tokenizers, tok_name):
    tok = tokenizers[tok_name]
    kind = greater_than.variant(tok)
    assert kind == {"gpt2": "two-digit", "smollm2": "digit-wise"}[tok_name]
    d = mv.tasks.make("greater-than", tok, n=50, seed=4)
    for i in range(len(d)):
        yy = int(re.search(r" 17(\d\d) ", d.clean_text[i]).group(1))
        good = {int(_decode(tok, [t])) for t in d.correct[i] if t >= 0}
        bad = {int(_decode(tok, [t])) for t in d.incorrect[i] if t >= 0}
        if kind == "two-digit":
            assert good == set(range(yy + 1, 100)) and bad == set(range(yy + 1))
            assert (d.clean[i] != d.corrupted[i]).sum() == 1
        else:
            t = yy // 10
            assert good == set(range(t + 1, 10)) and bad == set(range(t))
            assert 1 <= (d.clean[i] != d.corrupted[i]).sum() <= 2
        assert "1701" in d.corrupted_text[i]


def test_same_seed_same_data_new_seed_fresh_data(tokenizers):
    tok = tokenizers["smollm2"]
    a, b = mv.tasks.make("ioi", tok, n=30, seed=7), mv.tasks.make("ioi", tok, n=30, seed=7)
    c = mv.tasks.make("ioi", tok, n=30, seed=8)
    assert a.clean_text == b.clean_text
    for name in ("clean", "corrupted", "correct", "incorrect", "template", "uid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(set(a.clean_text) & set(c.clean_text)) < 5
    assert len(set(zip(a.clean_text, a.corrupted_text, strict=True))) == 30  # distinct pairs


def test_bad_requests_are_clear_errors(tokenizers):
    tok = tokenizers["gpt2"]
    with pytest.raises(ValueError, match="unknown task"):
        mv.tasks.make("copying", tok, n=5)
    with pytest.raises(ValueError, match="unknown template family 'poetry'"):
        mv.tasks.make("ioi", tok, n=5, templates="poetry")
    with pytest.raises(ValueError, match="unknown counterfactual"):
        mv.tasks.make("sva", tok, n=5, counterfactual="abc")
    cap = mv.tasks.capacity("greater-than", tok, templates=[0])
    with pytest.raises(
        ValueError, match=f"greater-than can generate at most {cap:,} distinct pairs .* got n = 100,000"
    ):
        mv.tasks.make("greater-than", tok, n=100_000, templates=[0])
    with pytest.raises(ValueError, match="positive integer"):
        mv.tasks.make("ioi", tok, n=0)


class _WordTokenizer:
    """A tokenizer that keeps every space-separated word whole (so years are one token)."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, text, add_special_tokens=False):
        words = text.replace(" ", "\x00 ").split("\x00")
        return [self.vocab.setdefault(w, len(self.vocab)) for w in words if w]

    def decode(self, ids):
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


def test_greater_than_refuses_a_tokenizer_with_whole_years():
    with pytest.raises(ValueError, match="' 1732' as"):
        mv.tasks.make("greater-than", _WordTokenizer(), n=5)


def test_misaligned_pairs_are_dropped_and_counted(tokenizers):
    tok = tokenizers["gpt2"]
    ok = task_data.Example("When Mary and John went", "When Mary and Paul went", (" Mary",), (" John",), 0, 0)
    bad = task_data.Example(
        "When Mary and John went", "When Mary and Bartholomew-Smythe went", (" Mary",), (" John",), 0, 0
    )
    data, dropped = task_data.build([ok, bad], tok, task="t", metric="logit_diff", counterfactual="x", seed=0, info={})
    assert len(data) == 1 and dropped["clean/corrupted token lengths differ"] == 1
    assert data.info["dropped"] == {"clean/corrupted token lengths differ": 1}
    with pytest.raises(ValueError, match="no usable"):
        task_data.build([bad], tok, task="t", metric="logit_diff", counterfactual="x", seed=0, info={})
    multi = task_data.Example("When Mary and John went", "When Mary and Paul went", (" Bartholomew",), (" John",), 0, 0)
    with pytest.raises(ValueError, match="not one"):
        task_data.build([multi], tok, task="t", metric="logit_diff", counterfactual="x", seed=0, info={})


def test_slicing_concat_save_load(tokenizers, tmp_path):
    tok = tokenizers["gpt2"]
    d = mv.tasks.make("ioi", tok, n=40, seed=5)
    part = d[np.array([3, 1, 7])]
    assert part.clean_text == (d.clean_text[3], d.clean_text[1], d.clean_text[7])
    width = d.attention_mask[[3, 1, 7]].sum(1).max()
    assert part.n_positions == width
    np.testing.assert_array_equal(part.clean, d.clean[[3, 1, 7], :width])
    assert len(d[5:9]) == 4 and len(d[d.family == 0]) == int((d.family == 0).sum())
    g = mv.tasks.make("ioi", tok, n=10, seed=6, templates="communication")
    both = mv.tasks.TaskData.concat([d[:5], g])
    assert len(both) == 15 and both.clean_text[5:] == g.clean_text
    np.testing.assert_array_equal(both.clean[5:, : g.n_positions], g.clean)
    path = tmp_path / "ioi.npz"
    both.save(path)
    back = mv.tasks.TaskData.load(path)
    assert back.clean_text == both.clean_text and back.task == "ioi" and back.info == both.info
    for name in (
        "clean",
        "corrupted",
        "attention_mask",
        "answer_pos",
        "correct",
        "incorrect",
        "template",
        "family",
        "uid",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(both, name))
    (tmp_path / "other.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable TaskData file"):
        mv.tasks.TaskData.load(tmp_path / "other.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a TaskData file"):
        mv.tasks.TaskData.load(tmp_path / "foreign.npz")
    with pytest.raises(ValueError, match="different task"):
        mv.tasks.TaskData.concat([d, mv.tasks.make("sva", tok, n=5)])


def test_metrics_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 20)).astype(np.float32) * 3
    correct = np.array([[1, 2, -1]] * 3 + [[4, -1, -1]] * 3, np.int32)
    incorrect = np.array([[5, 6, 7]] * 6, np.int32)
    ld = np.asarray(mv.tasks.logit_diff(logits, correct, incorrect))
    pd = np.asarray(mv.tasks.prob_diff(logits, correct, incorrect))
    probs = scipy.special.softmax(logits, axis=-1)
    for i in range(6):
        good = [c for c in correct[i] if c >= 0]
        np.testing.assert_allclose(ld[i], logits[i, good].mean() - logits[i, incorrect[i]].mean(), rtol=1e-6)
        np.testing.assert_allclose(pd[i], probs[i, good].sum() - probs[i, incorrect[i]].sum(), atol=1e-6)
    other = rng.normal(size=(6, 20)).astype(np.float32)
    kl = np.asarray(mv.tasks.kl_divergence(other, logits))
    expected = [scipy.stats.entropy(probs[i], scipy.special.softmax(other[i])) for i in range(6)]
    np.testing.assert_allclose(kl, expected, rtol=1e-5)


def test_kl_keeps_the_digits_of_a_small_kl():
    """KL of two close distributions over a large vocabulary, in float32, against scipy in float64:
    within 1e-3 relative from 5e-7 nats (where Σ p (log p − log q) is off by 100 %) to 400 nats."""
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1e-2, 1.0, 100.0):
        ref = (rng.normal(size=(8, 50_000)) * 4).astype(np.float32)
        other = (ref + rng.normal(size=ref.shape) * scale).astype(np.float32)
        kl = np.asarray(mv.tasks.kl_divergence(other, ref))
        log_p, log_q = (scipy.special.log_softmax(x.astype(np.float64), axis=-1) for x in (ref, other))
        np.testing.assert_allclose(kl, (np.exp(log_p) * (log_p - log_q)).sum(-1), rtol=1e-3)
    same = np.asarray(mv.tasks.kl_divergence(ref, ref))
    assert np.all(same == 0.0)  # KL(p ‖ p) is exactly 0, never negative


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        mv.tasks.get_metric("accuracy")


def test_counterfactual_noise(hf_dirs, tokenizers):
    model = mv.load_model(hf_dirs["gpt2"][0])
    d = mv.tasks.make("ioi", model, n=24, seed=0)
    plain = np.asarray(mv.tasks.corrupted_embeddings(model, d))
    assert np.allclose(plain, np.asarray(mv.tasks.corrupted_embeddings(model, d.with_noise(0.0))))
    noisy_data = d.with_noise(0.5, seed=11)
    noisy = np.asarray(mv.tasks.corrupted_embeddings(model, noisy_data))
    delta = noisy - plain
    differs = np.asarray(d.batch().differs)
    assert np.all(delta[~differs] == 0) and np.all(np.abs(delta[differs]).sum(-1) > 0)
    mean_norm = np.linalg.norm(np.asarray(model.params["tok_embed"]), axis=-1).mean()
    norms = np.linalg.norm(delta[differs], axis=-1)
    assert abs(norms.mean() / (0.5 * mean_norm) - 1) < 0.1  # E‖noise‖ ≈ σ r̄ (D = 32 here)
    again = np.asarray(mv.tasks.corrupted_embeddings(model, d.with_noise(0.5, seed=11)))
    np.testing.assert_array_equal(noisy, again)
    other = np.asarray(mv.tasks.corrupted_embeddings(model, d.with_noise(0.5, seed=12)))
    assert not np.allclose(other, noisy)
    part = noisy_data[5:9]  # an example keeps its noise when sliced (and re-padded)
    sliced = np.asarray(mv.tasks.corrupted_embeddings(model, part))
    np.testing.assert_allclose(sliced, noisy[5:9, : part.n_positions], atol=1e-6)
    with pytest.raises(ValueError, match="≥ 0"):
        mv.tasks.make("ioi", model, n=4, noise=-1.0)


def test_list_describes_every_task():
    listed = mv.tasks.list()
    assert set(listed) == {"ioi", "sva", "greater-than"}
    for info in listed.values():
        assert len(info["families"]) >= 2 and info["counterfactuals"] and info["metric"] in ("logit_diff", "prob_diff")


@pytest.mark.slow
def test_smollm2_solves_the_tasks(smollm2):
    ioi_eval = mv.tasks.evaluate_model(smollm2, mv.tasks.make("ioi", smollm2, n=120, seed=0))
    assert ioi_eval.clean_accuracy >= 0.90
    assert ioi_eval.corrupted.mean() < ioi_eval.clean.mean() - 2.0
    abb = mv.tasks.evaluate_model(smollm2, mv.tasks.make("ioi", smollm2, n=60, seed=0, counterfactual="abb"))
    assert abb.corrupted.mean() < 0 < abb.clean.mean()  # IO repeated: the model now prefers S
    sva_eval = mv.tasks.evaluate_model(smollm2, mv.tasks.make("sva", smollm2, n=120, seed=0))
    assert sva_eval.clean_accuracy >= 0.85
    assert sva_eval.corrupted.mean() < 0 < sva_eval.clean.mean()
    gt = mv.tasks.evaluate_model(smollm2, mv.tasks.make("greater-than", smollm2, n=60, seed=0))
    assert gt.clean_accuracy >= 0.85 and gt.corrupted.mean() < gt.clean.mean()


class _FewWords:
    """GPT-2's tokenizer, except that the task words outside ``keep`` are two tokens (so the
    generators drop them): a pool small enough to enumerate."""

    def __init__(self, tok, keep: set[str]):
        self.tok, self.keep = tok, keep
        self.excluded = set(ioi.NAMES + ioi.PLACES + ioi.OBJECTS + greater_than.NOUNS)
        self.excluded |= {w for p in "|".join([sva.SUBJECTS, sva.ATTRACTORS_PLACE, sva.ATTRACTORS_PERSON,
                          sva.CLAUSE_VERBS]).split("|") for w in p.split()}  # fmt: skip
        self.excluded -= keep
        self.eos_token_id = tok.eos_token_id

    def encode(self, text, add_special_tokens=False):
        if text.startswith(" ") and text[1:] in self.excluded:
            return [0, 0]
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tok.decode(ids)


FEW = {
    # task, counterfactual, kept words, capacity counted by hand
    ("ioi", "abc"): ({"Mary", "John", "Tom", "Sarah", "store", "drink"}, 16 * 2 * 4 * 3 * 2),
    ("ioi", "abb"): ({"Mary", "John", "Tom", "Sarah", "store", "drink"}, 16 * 2 * 4 * 3 * 1),
    ("sva", "number"): ({"author", "authors", "table", "tables", "guard", "guards", "likes", "like"}, 5 * 4 + 4 * 4),
    ("greater-than", "01"): ({"war"}, 6 * 97),
}


@pytest.mark.parametrize(("task", "cf"), list(FEW))
def test_capacity_is_the_exact_number_of_distinct_pairs(tokenizers, task, cf):
    """make(n = capacity) draws every pair (the union over seeds is no larger), n = capacity + 1 is refused."""
    keep, expected = FEW[(task, cf)]
    tok = _FewWords(tokenizers["gpt2"], keep)
    cap = mv.tasks.capacity(task, tok, counterfactual=cf)
    assert cap == expected
    seen = set()
    for seed in range(3):
        d = mv.tasks.make(task, tok, n=cap, seed=seed, counterfactual=cf)
        assert len(d) == cap and d.info["dropped"] == {}
        seen |= set(zip(d.clean_text, d.corrupted_text, strict=True))
    assert len(seen) == cap
    with pytest.raises(ValueError, match=f"{task} can generate at most {cap:,} distinct pairs .*got n = {cap + 1:,}"):
        mv.tasks.make(task, tok, n=cap + 1, counterfactual=cf)


def test_capacity_follows_templates_and_counterfactual(tokenizers):
    tok = tokenizers["gpt2"]
    full, abb = mv.tasks.capacity("ioi", tok), mv.tasks.capacity("ioi", tok, counterfactual="abb")
    names = len(ioi.NAMES)  # every candidate name is one GPT-2 token
    assert full == abb * (names - 2)
    parts = [mv.tasks.capacity("ioi", tok, templates=f) for f in ioi.FAMILIES]
    assert sum(parts) == full and all(p > 0 for p in parts)
    assert mv.tasks.capacity("greater-than", tok, templates=[0, 1]) == 2 * mv.tasks.capacity(
        "greater-than", tok, templates=[0]
    )
    model_tok = mv.tasks.capacity("sva", tokenizers["smollm2"])
    assert model_tok == mv.tasks.make("sva", tokenizers["smollm2"], n=5).info["pool_size"]
    with pytest.raises(ValueError, match="unknown counterfactual"):
        mv.tasks.capacity("ioi", tok, counterfactual="number")
    with pytest.raises(ValueError, match="unknown template family"):
        mv.tasks.capacity("ioi", tok, templates="poetry")


def test_huge_n_is_refused_at_once(tokenizers, monkeypatch):
    tok = tokenizers["gpt2"]
    cap = mv.tasks.capacity("ioi", tok)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started")

    registry = mv.tasks.registry
    monkeypatch.setitem(registry.TASKS, "ioi", dataclasses.replace(registry.TASKS["ioi"], sample=no_sampling))
    with pytest.raises(ValueError, match=f"ioi can generate at most {cap:,} distinct pairs .*got n = {10 * cap:,}"):
        mv.tasks.make("ioi", tok, n=10 * cap)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5, "0.1", None])
def test_noise_must_be_finite_and_non_negative(tokenizers, bad):
    tok = tokenizers["gpt2"]
    with pytest.raises(ValueError, match="must be a finite number ≥ 0"):
        mv.tasks.make("ioi", tok, n=4, noise=bad)
    d = mv.tasks.make("ioi", tok, n=4)
    with pytest.raises(ValueError, match="must be a finite number ≥ 0"):
        d.with_noise(bad)
    with pytest.raises(ValueError, match="must be a finite number ≥ 0"):
        dataclasses.replace(d, noise=bad)


def test_large_n_shows_plain_progress_lines(tokenizers, capsys, monkeypatch):
    from mivar_jax import _progress

    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    tok = tokenizers["gpt2"]
    mv.tasks.make("ioi", tok, n=mv.tasks.registry.PROGRESS_FROM - 1)
    assert capsys.readouterr().err == ""
    mv.tasks.make("ioi", tok, n=mv.tasks.registry.PROGRESS_FROM)
    err = capsys.readouterr().err
    assert "ioi: drawing pairs: 100% (5,000/5,000 items" in err
    assert "ioi: tokenizing: 100% (5,000/5,000 items" in err
    assert "\r" not in err and len(err.splitlines()) <= 10


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _run_progress(monkeypatch, tty: bool, steps, total=1000):
    """Feed ``progress_bar`` ``(time, items)`` steps on a fake clock; returns what it wrote."""
    from mivar_jax import _progress

    stream, now = _Stream(tty), [0.0]
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(_progress, "_clock", lambda: now[0])
    with _progress.progress_bar(True, total, "evaluate") as update:
        for t, k in steps:
            now[0] = t
            update(k)
    return stream.getvalue()


def test_progress_off_a_terminal_is_a_few_plain_lines(monkeypatch):
    steps = [(1, 100), (6, 100), (10, 100), (20, 100), (45, 50), (46, 550)]
    out = _run_progress(monkeypatch, False, steps)
    assert out.splitlines() == [
        "evaluate: 20% (200/1,000 items, 6 s)",  # the first line once past the delay
        "evaluate: 30% (300/1,000 items, 10 s)",  # a quarter crossed
        "evaluate: 45% (450/1,000 items, 45 s)",  # 30 s since the last line
        "evaluate: 100% (1,000/1,000 items, 46 s)",
    ]
    assert "\r" not in out
    many = _run_progress(monkeypatch, False, [(6 + t, 1) for t in range(1000)])  # 1000 updates over 1000 s
    assert len(many.splitlines()) <= 4 + 1000 // 30 + 1 and "\r" not in many
    assert _run_progress(monkeypatch, False, [(1, 500), (2, 500)]) == ""  # quick work shows nothing
    stopped = _run_progress(monkeypatch, False, [(6, 100), (7, 100)])  # ends short of the total: its last state
    assert stopped.splitlines() == ["evaluate: 10% (100/1,000 items, 6 s)", "evaluate: 20% (200/1,000 items, 7 s)"]


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    from mivar_jax import _progress

    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    out = _run_progress(monkeypatch, True, [(0, 300), (1, 700)])
    assert "\r" in out and "evaluate" in out
    with _progress.progress_bar(False, 10, "evaluate") as update:
        assert update is None
