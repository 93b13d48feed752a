"""Bad checkpoints and bad names get errors that say what is wrong."""

import json
import os
import re
import shutil

import numpy as np
import pytest

import mivar_jax as mv


@pytest.fixture
def gpt2_copy(hf_dirs, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(hf_dirs["gpt2"][0], directory)
    return directory


def test_missing_directory_or_unknown_name(tmp_path):
    with pytest.raises(mv.CheckpointError, match="registered name"):
        mv.load_model("smollm2-999m", cache_dir=str(tmp_path))
    with pytest.raises(mv.CheckpointError, match="no such file"):
        mv.load_model(str(tmp_path / "nowhere" / "x y"))


def test_missing_and_malformed_config(gpt2_copy):
    (gpt2_copy / "config.json").write_text("{ not json")
    with pytest.raises(mv.CheckpointError, match="malformed JSON"):
        mv.load_model(gpt2_copy)
    os.remove(gpt2_copy / "config.json")
    with pytest.raises(mv.CheckpointError, match="no config.json"):
        mv.load_model(gpt2_copy)


def test_unsupported_architecture(gpt2_copy):
    cfg = json.loads((gpt2_copy / "config.json").read_text())
    cfg["model_type"] = "bert"
    (gpt2_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(mv.CheckpointError, match="unsupported architecture model_type='bert'"):
        mv.load_model(gpt2_copy)


def test_config_weights_disagreement_names_the_tensor(gpt2_copy):
    cfg = json.loads((gpt2_copy / "config.json").read_text())
    cfg["n_embd"] = 64
    (gpt2_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        mv.CheckpointError, match=r"tensor '.*c_attn.weight' has shape \(32, 96\), the config implies \(64, 192\)"
    ):
        mv.load_model(gpt2_copy)


def test_missing_weights_and_missing_tensor(gpt2_copy):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(gpt2_copy / "model.safetensors")
    dropped = next(k for k in tensors if k.endswith("h.1.mlp.c_fc.bias"))
    save_file({k: v for k, v in tensors.items() if k != dropped}, gpt2_copy / "model.safetensors")
    with pytest.raises(mv.CheckpointError, match="h.1.mlp.c_fc.bias' is missing"):
        mv.load_model(gpt2_copy)
    (gpt2_copy / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(mv.CheckpointError, match="not a readable safetensors"):
        mv.load_model(gpt2_copy)
    os.remove(gpt2_copy / "model.safetensors")
    with pytest.raises(mv.CheckpointError, match="no model.safetensors"):
        mv.load_model(gpt2_copy)


def test_tokenizer_files_required_unless_declined(gpt2_copy):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(gpt2_copy / f)
    with pytest.raises(mv.CheckpointError, match="no tokenizer files"):
        mv.load_model(gpt2_copy)
    model = mv.load_model(gpt2_copy, tokenizer=False)
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="without a tokenizer"):
        model.tokenize("hi")


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(mv.CheckpointError, match="not a GGUF file"):
        mv.load_model(path)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(mv.CheckpointError, match="not a readable GGUF"):
        mv.load_model(truncated)


def test_registered_model_without_its_package(monkeypatch):
    from mivar_jax.models import loading

    monkeypatch.setitem(
        loading.REGISTERED,
        "ghost",
        loading.RegisteredModel("no_such_package_xyz", "x.gguf", "pip install --no-deps ghost", "a ghost"),
    )
    with pytest.raises(mv.CheckpointError, match="pip install --no-deps ghost"):
        mv.load_model("ghost")


def test_bad_dtype(hf_dirs):
    with pytest.raises(ValueError, match="dtype must be one of"):
        mv.load_model(hf_dirs["gpt2"][0], dtype="int8")


def test_empty_and_rowless_batches(hf_dirs):
    model = mv.load_model(hf_dirs["gpt2"][0])
    with pytest.raises(ValueError, match="no real token"):
        model(np.ones((2, 3), np.int32), np.array([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="integer array"):
        model(np.ones((1, 3), np.float32))


def _edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(directory, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(("name", "key"), [("gpt2", "n_layer"), ("llama-bias", "num_hidden_layers")])
def test_config_with_fewer_layers_than_the_weights_is_refused(hf_dirs, tmp_path, name, key):
    directory = tmp_path / name
    shutil.copytree(hf_dirs[name][0], directory)
    _edit_config(directory, **{key: 1})
    with pytest.raises(mv.CheckpointError) as err:
        mv.load_model(directory)
    message = str(err.value)
    per_layer = {"gpt2": 12, "llama-bias": 16}[name]
    assert f"{per_layer} tensors are not used by the model that config.json describes (1 layers)" in message
    assert re.search(
        r"\['[\w.]*(h|layers)\.1\.[\w.]+', .*\] and \d+ more; the config and the weights disagree", message
    )
    assert "\n" not in message


def test_unused_tensors_are_refused_unless_legitimate(hf_dirs, tmp_path):
    """Buffers older transformers versions saved and a tied head equal to the embeddings load; a
    foreign tensor or a tied head that differs from the embeddings is refused."""
    gpt2_dir, llama_dir = tmp_path / "gpt2", tmp_path / "llama"
    shutil.copytree(hf_dirs["gpt2"][0], gpt2_dir)
    shutil.copytree(hf_dirs["llama-tied"][0], llama_dir)
    reference = np.asarray(mv.load_model(gpt2_dir)(np.arange(5)[None]))

    def buffers_and_tied_head(t):
        t["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        t["transformer.h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
        t["lm_head.weight"] = t["transformer.wte.weight"].copy()

    _edit_tensors(gpt2_dir, buffers_and_tied_head)
    np.testing.assert_array_equal(np.asarray(mv.load_model(gpt2_dir)(np.arange(5)[None])), reference)

    def rotary(t):
        t["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    _edit_tensors(llama_dir, rotary)
    mv.load_model(llama_dir)

    _edit_tensors(gpt2_dir, lambda t: t.update({"score.weight": np.zeros((2, 32), np.float32)}))
    with pytest.raises(mv.CheckpointError, match=r"1 tensors are not used .*: \['score.weight'\]; the config"):
        mv.load_model(gpt2_dir)

    def other_head(t):
        del t["score.weight"]
        t["lm_head.weight"] = t["transformer.wte.weight"] + 1

    _edit_tensors(gpt2_dir, other_head)
    with pytest.raises(mv.CheckpointError, match="ties the output head .* 'lm_head.weight' differs from them"):
        mv.load_model(gpt2_dir)


def test_no_pytorch_notice_when_the_library_imports_transformers(hf_dirs):
    """transformers says "PyTorch was not found" on import; the library (which needs no PyTorch) hides
    exactly that message."""
    import subprocess
    import sys

    hide_torch = "import sys; sys.modules['torch'] = None\n"
    ours = (
        "import mivar_jax as mv\n"
        f"model = mv.load_model({hf_dirs['gpt2'][0]!r})\n"  # reads the tokenizer with transformers
        "import transformers\n"
        "transformers.logging.get_logger('transformers').warning('another transformers warning')\n"
        "print(model.tokenizer.encode(' Mary'))\n"
    )
    run = lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: E731
    control = run(hide_torch + "import transformers\n")
    assert "PyTorch was not found" in control.stderr  # torch really is hidden
    result = run(hide_torch + ours)
    assert "PyTorch was not found" not in result.stderr
    assert "another transformers warning" in result.stderr
    assert result.stdout.strip() == "[5335]"
