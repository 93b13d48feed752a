"""Bad checkpoints and bad names get errors that say what is wrong."""

import json
import os
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
