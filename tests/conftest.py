"""Shared fixtures: tiny checkpoints written by transformers, the embedded smollm2-135m."""

from __future__ import annotations

import os
import tempfile

# One persistent compilation cache per test session, inherited by the subprocesses the tests start
# (resumed studies, 8-device runs, notebooks): a kernel compiled once is not compiled again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mivar-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """Random-initialised transformers models saved to disk: {name: (directory, torch model)}."""
    from tests.factory import make_hf_model

    root = tmp_path_factory.mktemp("hf")
    specs = {
        "gpt2": ("gpt2", {}),
        "gpt2-untied": ("gpt2", {"tie_word_embeddings": False, "activation_function": "gelu"}),
        "llama-gqa-llama3": (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 10000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            },
        ),
        "llama-tied": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
        "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4}),
        "qwen2": ("qwen2", {"tie_word_embeddings": True}),
    }
    out = {}
    for name, (kind, overrides) in specs.items():
        directory = os.path.join(root, name)
        out[name] = (directory, make_hf_model(kind, directory, **overrides))
    return out


@pytest.fixture(scope="session")
def smollm2():
    import mivar_jax as mv

    return mv.load_model("smollm2-135m")
