"""Shared fixtures: tiny checkpoints written by transformers, the embedded smollm2-135m."""

from __future__ import annotations

import gc
import importlib
import os
import sys
import tempfile

import jaxtyping

# Every annotation in mivar_jax (array shapes and dtypes, and the plain ones too) is checked by
# beartype while the tests run: a wrong shape fails a test. An int passes for a float (PEP 484's
# numeric tower, as static checkers read it). The hook must be installed before mivar_jax is first
# imported (this file is imported first, in every xdist worker).
assert "mivar_jax" not in sys.modules, "mivar_jax was imported before tests/conftest.py installed the type checks"
jaxtyping.install_import_hook(["mivar_jax"], "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))")

# One persistent compilation cache per test session, inherited by the subprocesses the tests start
# (resumed studies, 8-device runs, notebooks): a kernel compiled once is not compiled again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mivar-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compiling dominates the tests' time (tiny models, many kernels): XLA:CPU compiles them without
# LLVM's optimisation passes, inherited by the subprocesses too. The computations, their shapes and
# the tolerances are unchanged; the CLI, the benchmarks and users compile at XLA's default level.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)

# Not type-checked at run time: public entry points that validate their own arguments with errors
# that name the argument and what is allowed, which the tests check by passing ill-typed values (a
# type check would pre-empt them). Their annotations still say what is valid; what they call is
# checked.
VALIDATING_ENTRY_POINTS = (
    "mivar_jax.tasks.registry:make",
    "mivar_jax.tasks.data:TaskData.__init__",
    "mivar_jax.tasks.data:TaskData.with_noise",
    "mivar_jax.circuits.selection:select",
    "mivar_jax.estimators.attribute:attribute",
    "mivar_jax.evaluation:evaluate",
    "mivar_jax.stats.bootstrap:bootstrap",
)
for _name in VALIDATING_ENTRY_POINTS:
    _module, _attrs = _name.split(":")
    _fn = importlib.import_module(_module)
    for _attr in _attrs.split("."):
        _fn = getattr(_fn, _attr)
    _fn.__no_type_check__ = True  # read by jaxtyping's wrapper at each call


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_kernels():
    """After each test file, drop the in-memory compiled kernels (the persistent cache keeps them on
    disk). An xdist worker runs many files; with every file's executables kept for the whole session
    (several GB of JIT-compiled code and buffers by the end), XLA:CPU has crashed the worker while
    compiling (a segmentation fault) or serialising (an abort) late in the run."""
    yield
    jax.clear_caches()
    gc.collect()


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
                }
            },
        ),
        "llama-tied": ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
        "llama-bias": ("llama", {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4}),
        "qwen2": ("qwen2", {"tie_word_embeddings": True}),
        # QK-norm; layer 1 attends through a sliding window of 2 (layer 0 fully)
        "qwen3-sliding": (
            "qwen3",
            {"head_dim": 8, "use_sliding_window": True, "sliding_window": 2, "max_window_layers": 1},
        ),
        "mistral": ("mistral", {"sliding_window": 3}),
        "phi3": ("phi3", {"partial_rotary_factor": 0.5}),
        "pythia": ("gpt_neox", {"rotary_pct": 0.5, "use_parallel_residual": True}),
        "neox-sequential": ("gpt_neox", {"rotary_pct": 0.25, "use_parallel_residual": False, "hidden_act": "gelu_new"}),
        # post-norms, GeGLU, √D embeddings; both soft-caps active (|logits| reach ~0.9 of the cap); layer 0 slides
        "gemma2": ("gemma2", {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.0}),
        # + per-head QK-norm, and the sliding layer's own RoPE base
        "gemma3": (
            "gemma3_text",
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 100.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                }
            },
        ),
        "olmo2": (
            "olmo2",
            {"eos_token_id": 50256},
        ),  # norms only after the sublayers; QK-norm over all heads (GQA: K = 2)
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
