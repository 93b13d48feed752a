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
MODELS = [
    "gpt2",
    "gpt2-untied",
    "llama-gqa-llama3",
    "llama-tied",
    "llama-bias",
    "qwen2",
    "qwen3-sliding",
    "mistral",
    "phi3",
]
MODELS += ["pythia", "neox-sequential", "gemma2", "gemma3", "olmo2"]


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


def test_bfloat16_scores_track_float32_except_exact(hf_dirs):
    """A bfloat16 model's logits come out float32 (the unembedding accumulates in float32), its EAP
    scores rank the edges as float32's do, and exact patching, whose scores are differences of two
    rounded metrics, warns (README, "Reduced precision")."""
    from scipy.stats import spearmanr

    directory, _ = hf_dirs["llama-gqa-llama3"]
    f32, bf16 = mv.load_model(directory), mv.load_model(directory, dtype="bfloat16")
    data = mv.tasks.make("ioi", f32, n=4, seed=0)
    assert bf16(data.clean, data.attention_mask).dtype == np.float32
    a, b = (mv.attribute(m, data, "eap", progress=False).per_input for m in (f32, bf16))
    assert b.dtype == np.float32
    rho = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    assert np.median(rho) > 0.95, rho
    with pytest.warns(UserWarning, match="float32 for exact patching"):
        mv.attribute(bf16, data[:1], "exact", level="node", progress=False)


_LOAD_PEAK = """
import resource, sys
import jax, jax.numpy as jnp
import mivar_jax as mv
jnp.ones(1).block_until_ready()  # the runtime up before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = mv.load_model(sys.argv[1], dtype=sys.argv[2], tokenizer=False)
jax.block_until_ready(model.params)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _bf16_checkpoint(directory, layers=8, width=512, vocab=32000):
    """A Llama checkpoint stored in bfloat16 (about 90 MB), written with safetensors' numpy API."""
    import json

    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    w = lambda *shape: (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)
    t = {
        "model.embed_tokens.weight": w(vocab, width),
        "model.norm.weight": w(width) + 1,
        "lm_head.weight": w(vocab, width),
    }
    for i in range(layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        t.update({f"model.layers.{i}.input_layernorm.weight": w(width) + 1,
                  f"model.layers.{i}.post_attention_layernorm.weight": w(width) + 1})  # fmt: skip
        t.update({a + f"{x}_proj.weight": w(width, width) for x in "qkvo"})
        t.update({m + "gate_proj.weight": w(4 * width, width), m + "up_proj.weight": w(4 * width, width)})
        t[m + "down_proj.weight"] = w(width, 4 * width)
    os.makedirs(directory)
    save_file(t, os.path.join(directory, "model.safetensors"))
    config = dict(model_type="llama", hidden_size=width, num_attention_heads=8, num_hidden_layers=layers,
                  intermediate_size=4 * width, vocab_size=vocab, tie_word_embeddings=False)  # fmt: skip
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return t, sum(a.nbytes for a in t.values())


def test_bfloat16_checkpoints_stay_bfloat16_and_load_without_a_second_copy(tmp_path):
    """Loaded as bfloat16, a bfloat16 checkpoint's weights are its stored bits, and loading it
    never holds much more than one copy of the weights beside the file's pages (peak RSS: the
    old path widened to float32 and kept host and device copies, about 3× the weights)."""
    import subprocess
    import sys

    directory = str(tmp_path / "bf16")
    stored, size = _bf16_checkpoint(directory)
    model = mv.load_model(directory, dtype="bfloat16", tokenizer=False)
    w_q = np.asarray(model.params["blocks"]["w_q"])  # [L, H, D, Dh]
    assert w_q.dtype == np.dtype("bfloat16")
    want = stored["model.layers.3.self_attn.q_proj.weight"].reshape(8, 64, 512).transpose(0, 2, 1)
    assert np.array_equal(w_q[3].view(np.uint16), want.view(np.uint16))
    peaks = {}
    for dtype in ("bfloat16", "float32"):
        out = subprocess.run([sys.executable, "-c", _LOAD_PEAK, directory, dtype], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        peaks[dtype] = int(out.stdout.strip().splitlines()[-1])
    # weights once (the device copy) + the file read through the page cache + one leaf at a time
    assert peaks["bfloat16"] < 2.3 * size, (peaks, size)
    assert peaks["float32"] < 3.3 * size, (peaks, size)  # float32 weights are 2× the file
