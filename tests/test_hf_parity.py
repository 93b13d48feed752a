"""Logits parity with transformers' PyTorch models, loaded through mivar_jax's real loading path."""

import os
import shutil

import numpy as np
import pytest

import mivar_jax as mv
from mivar_jax.models import pad_batch
from tests.factory import hf_logits, make_hf_model

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The keys to the cabinet",
    "The war lasted from the year 1732 to the year 17",
]
MODELS = ["gpt2", "gpt2-untied", "llama-gqa-llama3", "llama-tied", "llama-bias", "qwen2"]


def _assert_real_positions_close(ours, ref, mask, atol=1e-4):
    real = np.asarray(mask, bool)
    diff = np.abs(np.asarray(ours)[real] - ref[real]).max()
    assert diff <= atol, f"max |Δlogit| = {diff:.2e} > {atol}"


@pytest.mark.parametrize("name", MODELS)
def test_single_prompt_logits_match_transformers(hf_dirs, name):
    directory, torch_model = hf_dirs[name]
    model = mv.load_model(directory)
    assert model.tokenizer is not None
    batch = model.tokenize(PROMPTS[0])
    _assert_real_positions_close(model(batch.tokens), hf_logits(torch_model, batch.tokens), batch.attention_mask)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_logits_match_transformers(hf_dirs, name, side):
    directory, torch_model = hf_dirs[name]
    model = mv.load_model(directory)
    batch = model.tokenize(PROMPTS, padding_side=side)
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # really of different lengths
    ours = model(batch.tokens, batch.attention_mask)
    ref = hf_logits(torch_model, batch.tokens, batch.attention_mask)
    _assert_real_positions_close(ours, ref, batch.attention_mask)
    # logits at one position per prompt (the last real token) are the same numbers
    at_last = model(batch.tokens, batch.attention_mask, logit_positions=batch.last)
    np.testing.assert_allclose(at_last, ref[np.arange(3), batch.last], atol=1e-4, rtol=0)


def test_a_prompt_padded_equals_the_prompt_alone(hf_dirs):
    model = mv.load_model(hf_dirs["llama-gqa-llama3"][0])
    ids = [model.tokenizer.encode(p) for p in PROMPTS]
    for side in ("right", "left"):
        batch = pad_batch(ids, pad_id=0, padding_side=side)
        both = model(batch.tokens, batch.attention_mask, logit_positions=batch.last)
        for i, x in enumerate(ids):
            alone = model(np.array([x]), logit_positions=np.array([len(x) - 1]))
            np.testing.assert_allclose(both[i], alone[0], atol=1e-5, rtol=0)


def test_sharded_safetensors_load_identically(tmp_path):
    directory = str(tmp_path / "sharded")
    torch_model = make_hf_model("llama", directory, seed=3, max_shard_size="300KB")
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(directory) if f.endswith(".safetensors")]) > 1
    model = mv.load_model(directory)
    batch = model.tokenize(PROMPTS[1])
    _assert_real_positions_close(model(batch.tokens), hf_logits(torch_model, batch.tokens), batch.attention_mask)


def test_hub_name_resolves_from_the_local_cache_only(hf_dirs, tmp_path):
    directory, torch_model = hf_dirs["gpt2"]
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-gpt2" / "snapshots" / ("0" * 40)
    shutil.copytree(directory, snapshot)
    (cache / "models--tiny-org--tiny-gpt2" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-gpt2" / "refs" / "main").write_text("0" * 40)
    model = mv.load_model("tiny-org/tiny-gpt2", cache_dir=str(cache))
    batch = model.tokenize(PROMPTS[0])
    _assert_real_positions_close(model(batch.tokens), hf_logits(torch_model, batch.tokens), batch.attention_mask)
    with pytest.raises(mv.CheckpointError, match="nothing is downloaded"):
        mv.load_model("tiny-org/not-cached", cache_dir=str(cache))


def test_bfloat16_parameters_track_float32(hf_dirs):
    directory, _ = hf_dirs["qwen2"]
    f32, bf16 = mv.load_model(directory), mv.load_model(directory, dtype="bfloat16")
    assert bf16.dtype == np.dtype("bfloat16") and bf16.params["blocks"]["w_q"].dtype == np.dtype("bfloat16")
    batch = f32.tokenize(PROMPTS[0])
    a = np.asarray(f32(batch.tokens), np.float32)
    b = np.asarray(bf16(batch.tokens), np.float32)
    # bfloat16 keeps 8 significant bits: errors of a few percent of the logits' scale
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
