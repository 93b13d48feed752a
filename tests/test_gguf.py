"""GGUF loading against transformers' own GGUF loader, on files written in llama.cpp's conventions."""

import os
import re

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models import pad_batch
from tests.factory import gpt2_tokenizer, hf_logits, make_hf_model, write_gguf

QTYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"]
TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The war lasted from the year 1732 to the year 17",
    "  héllo\nworld\t\t 123456 it's <|endoftext|> 😀 ,,;; ",
]
SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """Tiny models with a 512-token vocabulary (quantising GPT-2's 50k embeddings is slow)."""
    root = tmp_path_factory.mktemp("gguf-src")
    specs = {
        "llama-tied": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
        "llama-gqa": ("llama", {"num_key_value_heads": 2}),
        "qwen2": ("qwen2", {"tie_word_embeddings": True}),
        "qwen3": ("qwen3", {}),  # QK-norm
        "phi3": ("phi3", {"vocab_size": 32064}),  # fused q/k/v, gate/up; transformers' GGUF reader pads at id 32000
    }
    models = {
        name: make_hf_model(kind, str(root / name), seed=7, **{"vocab_size": SMALL_VOCAB, **kw})
        for name, (kind, kw) in specs.items()
    }
    # transformers' GGUF reader takes GPT-2's vocabulary size from the file's tokenizer and assumes
    # 1024 positions: this one carries GPT-2's real vocabulary.
    models["gpt2"] = make_hf_model("gpt2", str(root / "gpt2"), n_positions=1024, seed=7)
    return models


def _transformers_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path)).eval()


def _assert_logits_match(model, oracle):
    """Our logits on three random padded prompts equal ``oracle``'s (a torch model) within 1e-4;
    returns (batch, real positions, the oracle's logits)."""
    rng = np.random.default_rng(0)
    batch = pad_batch([rng.integers(0, SMALL_VOCAB, n).tolist() for n in (9, 5, 12)])
    ours = np.asarray(model(batch.tokens, batch.attention_mask))
    ref = hf_logits(oracle, batch.tokens, batch.attention_mask)
    real = batch.attention_mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= 1e-4
    return batch, real, ref


CASES = [(name, q) for name in ("llama-tied", "llama-gqa", "qwen2") for q in QTYPES] + [
    ("qwen3", "F32"),
    ("qwen3", "Q8_0"),
    ("phi3", "F32"),
    ("phi3", "Q8_0"),
    ("gpt2", "F32"),
    ("gpt2", "Q4_1"),
]


@pytest.mark.parametrize(("name", "qtype"), CASES)
def test_gguf_logits_match_transformers_gguf_loading(small_models, tmp_path, name, qtype):
    torch_model = small_models[name]
    path = str(tmp_path / f"{name}-{qtype}.gguf")
    write_gguf(torch_model, path, qtype, vocab=name == "gpt2")
    model = mv.load_model(path, tokenizer=False)
    batch, real, ref = _assert_logits_match(model, _transformers_gguf(path))
    if qtype != "F32":  # quantisation really happened: the weights differ from the float model's
        float_ref = hf_logits(torch_model, batch.tokens, batch.attention_mask)
        assert np.abs(float_ref[real] - ref[real]).max() > 1e-4


def test_rope_freqs_tensor_reproduces_llama3_scaling(hf_dirs, tmp_path):
    """A GGUF that carries Llama 3 scaling as llama.cpp does (rope_freqs factors) equals the HF model."""
    from mivar_jax.models.config import rope_inv_freq

    directory, torch_model = hf_dirs["llama-gqa-llama3"]
    hf_model = mv.load_model(directory)
    base = np.array(rope_inv_freq(hf_model.config.d_head, 10000.0))
    factors = base / np.array(hf_model.config.rope_inv_freq)
    assert not np.allclose(factors, 1.0)
    path = str(tmp_path / "llama3.gguf")
    write_gguf(torch_model, path, "F32", rope_freqs=factors, vocab=False)
    gguf_model = mv.load_model(path, tokenizer=False)
    np.testing.assert_allclose(gguf_model.config.rope_inv_freq, hf_model.config.rope_inv_freq, rtol=1e-6)
    batch = hf_model.tokenize(TEXTS[0])
    ref = hf_logits(torch_model, batch.tokens)
    assert np.abs(np.asarray(gguf_model(batch.tokens)) - ref).max() <= 1e-4


def test_gguf_tokenizer_equals_gpt2s_official_tokenizer(hf_dirs, tmp_path):
    path = str(tmp_path / "tok.gguf")
    write_gguf(hf_dirs["gpt2"][1], path, "F32")
    ours = mv.load_model(path).tokenizer
    official = gpt2_tokenizer()
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False) == official.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == text
    assert ours.eos_token == "<|endoftext|>"


def test_unsupported_gguf_architecture_is_refused(tmp_path):
    import gguf

    path = str(tmp_path / "bert.gguf")
    w = gguf.GGUFWriter(path, "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mv.CheckpointError, match="unsupported GGUF architecture 'bert'"):
        mv.load_model(path)


@pytest.mark.parametrize(("shift", "message"), [(-1, "blocks_unused"), (+1, "block_missing")])
def test_gguf_block_count_must_match_the_tensors(hf_dirs, tmp_path, monkeypatch, shift, message):
    """A GGUF whose metadata declares fewer blocks than its tensors is refused (naming the unused
    tensors), one that declares more names the missing tensor by its GGUF name."""
    import gguf

    add_block_count = gguf.GGUFWriter.add_block_count
    monkeypatch.setattr(gguf.GGUFWriter, "add_block_count", lambda self, n: add_block_count(self, n + shift))
    path = str(tmp_path / "blocks.gguf")
    write_gguf(hf_dirs["llama-gqa-llama3"][1], path, "F32", rope_freqs=np.ones(4, np.float32), vocab=False)
    with pytest.raises(mv.CheckpointError) as err:
        mv.load_model(path, tokenizer=False)
    text = str(err.value)
    assert "\n" not in text
    if message == "blocks_unused":
        assert "9 tensors are not used by the model that the GGUF metadata describes (1 blocks)" in text
        assert "['blk.1.attn_k.weight', 'blk.1.attn_norm.weight'" in text and "and 4 more" in text
        assert "rope_freqs" not in text  # read by the config, not unused
    else:
        assert re.search(r"tensor 'blk\.2\.\w+\.weight' \(read as 'model\.layers\.2\.[\w.]+'\) is missing$", text)


def test_gguf_tokenizer_has_the_official_fingerprint_and_a_name(hf_dirs, tmp_path):
    from mivar_jax.models.model import tokenizer_fingerprint

    path = str(tmp_path / "tok.gguf")
    write_gguf(hf_dirs["gpt2"][1], path, "F32")
    fp = mv.load_model(path).tokenizer_fingerprint
    assert fp["name"] == path and fp["sha256"] == tokenizer_fingerprint(gpt2_tokenizer())["sha256"]
    data = mv.tasks.make("ioi", mv.load_model(path), n=4)
    assert data.info["tokenizer"] == fp


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("gemma2", {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.0, "query_pre_attn_scalar": 8}),
        # llama.cpp's Gemma 3 layout: five sliding layers in six, so both layers here slide
        ("gemma3_text", {"query_pre_attn_scalar": 8, "layer_types": ["sliding_attention"] * 2}),
        ("olmo2", {"eos_token_id": 0}),
        ("gpt_neox", {"rotary_pct": 0.5, "use_parallel_residual": True}),
    ],
)
def test_gguf_round_trip_where_transformers_cannot_read_the_file(tmp_path, kind, overrides):
    """transformers' GGUF reader has no OLMo 2 or GPT-NeoX and drops Gemma's soft-caps and query
    scale, so the oracle is the checkpoint the file was written from: its logits, within float32
    rounding."""
    torch_model = make_hf_model(kind, str(tmp_path / kind), seed=7, vocab_size=SMALL_VOCAB, **overrides)
    path = str(tmp_path / f"{kind}.gguf")
    write_gguf(torch_model, path, "F32", vocab=False)
    model = mv.load_model(path, tokenizer=False)
    assert model.config.family == kind
    _assert_logits_match(model, torch_model)
