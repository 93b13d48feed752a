"""Reading tensors and metadata from checkpoints: safetensors directories and GGUF files.

Both present tensors under Hugging Face names, as float32 numpy arrays, so each model family
has a single converter from HF names to the project's parameter pytree. A GGUF file is seen
through a renaming view (``GGUFTensors``) that also undoes llama.cpp's layout changes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or describes an unsupported model."""


class Tensors:
    """Name → array access (in ``dtype``: the parameters' dtype, so a bfloat16 checkpoint loaded as
    bfloat16 is never widened) with errors that name the checkpoint and the tensor.

    It records the tensors read, so that ``check_all_used`` can refuse a checkpoint holding
    tensors its config does not account for (e.g. a config declaring fewer layers than the weights).
    """

    source: str
    dtype: np.dtype = np.dtype(np.float32)

    def names(self) -> set[str]:
        raise NotImplementedError

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _stored_names(self) -> set[str]:
        """Every tensor the file holds, under the names the file uses."""
        return self.names()

    def _stored_name(self, name: str) -> str:
        """The file's name of the tensor read as ``name``."""
        return name

    def _missing(self, name: str) -> str:
        return f"{self.source}: tensor {name!r} is missing"

    @property
    def used(self) -> set[str]:
        """The tensors read so far (names as passed to ``get``)."""
        return self.__dict__.setdefault("_used", set())

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self:
            raise CheckpointError(self._missing(name))
        self.used.add(name)
        array = np.asarray(self._read(name)).astype(self.dtype, copy=False)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: tensor {name!r} has shape {tuple(array.shape)}, the config implies {tuple(shape)}"
            )
        return array

    def stack(self, pattern: str, n_layers: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``pattern`` with ``{i}`` for the layer; returns [n_layers, *shape], filled layer by layer
        (no second copy of the stack)."""
        first = self.get(pattern.format(i=0), shape)
        out = np.empty((n_layers, *first.shape), first.dtype)
        out[0] = first
        for i in range(1, n_layers):
            out[i] = self.get(pattern.format(i=i), first.shape)
        return out

    def check_all_used(self, allowed: re.Pattern | None, described_by: str) -> None:
        """Raise unless every stored tensor was read or fully matches ``allowed`` (the family's
        legitimately unused tensors, e.g. buffers), naming the first few and the count."""
        read = {self._stored_name(n) for n in self.used}
        unused = sorted(n for n in self._stored_names() - read if allowed is None or not allowed.fullmatch(n))
        if unused:
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            raise CheckpointError(
                f"{self.source}: {len(unused)} tensors are not used by the model {described_by}: "
                f"{unused[:5]}{more}; the config and the weights disagree"
            )


class SafetensorsTensors(Tensors):
    """The weights of a Hugging Face directory: ``model.safetensors`` or a sharded index."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.source = directory
        index_path = os.path.join(directory, "model.safetensors.index.json")
        single_path = os.path.join(directory, "model.safetensors")
        if os.path.exists(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index_path}: malformed safetensors index ({err})") from None
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single_path):
            weight_map, files = None, ["model.safetensors"]
        else:
            found = sorted(os.listdir(directory))
            hint = (
                " (PyTorch .bin weights are not read: save with safe_serialization=True)"
                if any(f.endswith(".bin") for f in found)
                else ""
            )
            raise CheckpointError(
                f"{directory}: no model.safetensors or model.safetensors.index.json{hint}; found {found}"
            )
        self._handles = {}
        self._where: dict[str, str] = {}
        for file in files:
            path = os.path.join(directory, file)
            if not os.path.exists(path):
                raise CheckpointError(f"{directory}: shard {file!r} listed in the index is missing")
            try:
                handle = safe_open(path, framework="flax")
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
            self._handles[file] = handle
            for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                self._where[key] = file
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._where))
            if missing:
                raise CheckpointError(
                    f"{directory}: {len(missing)} tensors listed in the index are absent from the shards: {missing[:5]}"
                )

    def names(self) -> set[str]:
        return set(self._where)

    def _read(self, name: str) -> np.ndarray:
        return np.asarray(self._handles[self._where[name]].get_tensor(name))  # via jax: bfloat16 too


class GGUFFile:
    """A GGUF file's metadata and raw tensors (via the ``gguf`` package)."""

    def __init__(self, path: str):
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}

    def meta(self, key: str, default: Any = ...) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if default is ...:
                raise CheckpointError(f"{self.path}: GGUF metadata {key!r} is missing")
            return default
        return field.contents()

    @property
    def architecture(self) -> str:
        return str(self.meta("general.architecture"))

    def dequantize(self, name: str) -> np.ndarray:
        """A tensor as float32 in PyTorch layout ([out, in] for matrices)."""
        import gguf

        t = self.tensors[name]
        try:
            return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except NotImplementedError as err:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the gguf package cannot dequantize ({err})"
            ) from None


# A GGUF renaming: HF name → (GGUF name, transform of the dequantized array).
GGUFNameMap = Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


class GGUFTensors(Tensors):
    """A GGUF file's tensors seen under HF names (see each family's ``gguf_name_map``)."""

    def __init__(self, file: GGUFFile, name_map: GGUFNameMap):
        self.source = file.path
        self._file = file
        self._all = dict(name_map)
        self._map = {hf: v for hf, v in name_map.items() if v[0] in file.tensors}

    def names(self) -> set[str]:
        return set(self._map)

    def _stored_names(self) -> set[str]:
        return set(self._file.tensors)

    def _stored_name(self, name: str) -> str:
        return self._map[name][0]

    def _missing(self, name: str) -> str:
        gguf_name = self._all[name][0] if name in self._all else "?"
        return f"{self.source}: tensor {gguf_name!r} (read as {name!r}) is missing"

    def _read(self, name: str) -> np.ndarray:
        gguf_name, transform = self._map[name]
        return transform(self._file.dequantize(gguf_name))


def check_tied_head(t: Tensors, embed: np.ndarray, name: str = "lm_head.weight") -> None:
    """A checkpoint whose config ties the output head to the token embeddings may still store the
    head (a copy of the embeddings): it must then equal them."""
    if name in t and not np.array_equal(t.get(name, embed.shape), embed):
        raise CheckpointError(
            f"{t.source}: the config ties the output head to the token embeddings (tie_word_embeddings), "
            f"but the stored {name!r} differs from them; set tie_word_embeddings=false if the head is separate"
        )


def read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"{os.path.dirname(path) or '.'}: no {os.path.basename(path)}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed JSON ({err})") from None


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)
