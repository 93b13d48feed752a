"""Model: a loaded checkpoint (config, parameters, tokenizer, graph) with checked entry points."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import weakref
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mivar_jax.graph import Graph
from mivar_jax.models import transformer
from mivar_jax.models.config import ModelConfig

forward_jit = jax.jit(transformer.forward, static_argnums=0, static_argnames="nodes")


class TokenBatch(NamedTuple):
    """Padded prompts: ``tokens`` [N, P] int32, ``attention_mask`` [N, P] (1 = real token),
    ``last`` [N] the index of each prompt's last real token (where the next token is predicted)."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    last: np.ndarray


@dataclasses.dataclass(eq=False)
class Model:
    """A transformer in graph form.

    ``params`` is the pure parameter pytree; ``config`` (hashable) is the static argument of
    the pure function ``mivar_jax.models.forward``. The methods here check
    their inputs on the host (token range, context length, mask shape), then call the jit-compiled
    pure functions.
    """

    config: ModelConfig
    params: Any
    tokenizer: Any = None
    source: str = ""

    @property
    def graph(self) -> Graph:
        return self.config.graph

    @property
    def dtype(self) -> jnp.dtype:
        return self.params["tok_embed"].dtype

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({c.name!r}, family={c.family}, layers={c.n_layers}, heads={c.n_heads}/{c.n_kv_heads}kv, "
            f"d_model={c.d_model}, edges={self.graph.n_edges}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ checked entry points
    def check_batch(
        self, tokens: Any, attention_mask: Any = None, *, names: tuple[str, str] = ("tokens", "attention_mask")
    ) -> tuple[jax.Array, jax.Array]:
        """Validate a token batch on the host; returns device arrays (int32). Errors name the array
        (``names``), the first offending row (and column), the value and the allowed range."""
        tok_name, mask_name = names
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{tok_name} must be an integer array [N, P], got {tokens.dtype} {tokens.shape}")
        n, p = tokens.shape
        if n == 0 or p == 0:
            raise ValueError(f"empty token batch: {tok_name} has shape {tokens.shape}")
        if p > self.config.n_ctx:
            raise ValueError(
                f"{tok_name} has {p} positions, more than the context length of {self.config.name} "
                f"({self.config.n_ctx})"
            )
        check_token_ids(tokens, self.config.vocab_size, tok_name, self.config.name)
        if attention_mask is None:
            attention_mask = np.ones_like(tokens)
        attention_mask = np.asarray(attention_mask)
        if attention_mask.ndim == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != tokens.shape:
            raise ValueError(
                f"{mask_name} has shape {attention_mask.shape}, {tok_name} {tokens.shape}: they must match"
            )
        bad = ~np.isin(attention_mask, (0, 1))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{mask_name}[{r}, {c}] = {attention_mask[r, c]}; a mask holds only 0 and 1")
        empty = np.nonzero(attention_mask.sum(-1) == 0)[0]
        if empty.size:
            raise ValueError(
                f"{mask_name} row {empty[0]} has no real token (all 0); {empty.size} such rows: {empty[:10].tolist()}"
            )
        return jnp.asarray(tokens, jnp.int32), jnp.asarray(attention_mask, jnp.int32)

    def forward(
        self, tokens, attention_mask=None, intervention=None, *, input_embeds=None, logit_positions=None, nodes=False
    ):
        """Logits [N, P, V] (or [N, V] at ``logit_positions``) of a run under ``intervention``
        (default: the plain model; see ``mivar_jax.models.interventions``), and with ``nodes`` the
        node outputs [S, N, P, D] too (see ``mivar_jax.models.forward``)."""
        tokens, attention_mask = self.check_batch(tokens, attention_mask)
        logit_positions = self._check_positions(logit_positions, tokens.shape)
        return forward_jit(
            self.config, self.params, tokens, attention_mask, intervention,
            input_embeds=input_embeds, logit_positions=logit_positions, nodes=nodes,
        )  # fmt: skip

    __call__ = forward

    def node_outputs(self, tokens, attention_mask=None, *, input_embeds=None) -> jax.Array:
        """Node outputs [S, N, P, D] of a plain run (e.g. the corrupted run, to patch from)."""
        return self.forward(tokens, attention_mask, input_embeds=input_embeds, nodes=True)[1]

    @staticmethod
    def _check_positions(logit_positions, shape) -> jax.Array | None:
        if logit_positions is None:
            return None
        pos = np.asarray(logit_positions)
        if pos.shape != (shape[0],) or not np.issubdtype(pos.dtype, np.integer):
            raise ValueError(f"logit_positions must be integers of shape ({shape[0]},), got {pos.dtype} {pos.shape}")
        if pos.min() < 0 or pos.max() >= shape[1]:
            raise ValueError(f"logit_positions must lie in [0, {shape[1]}), got [{pos.min()}, {pos.max()}]")
        return jnp.asarray(pos, jnp.int32)

    @property
    def tokenizer_fingerprint(self) -> dict[str, Any] | None:
        """The tokenizer's identity (see ``tokenizer_fingerprint``), or None without a tokenizer.
        Hashed once per tokenizer object, not per call."""
        return None if self.tokenizer is None else tokenizer_fingerprint(self.tokenizer)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: str | list[str], *, padding_side: str = "right") -> TokenBatch:
        """Encode prompts (no special tokens added) and pad them into one batch."""
        if self.tokenizer is None:
            raise ValueError(f"{self.config.name} was loaded without a tokenizer")
        if isinstance(texts, str):
            texts = [texts]
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return pad_batch(ids, pad_id=self.pad_token_id, padding_side=padding_side)

    @property
    def pad_token_id(self) -> int:
        return pad_token_id(self.tokenizer)

    def token_id(self, text: str) -> int:
        """The id of a string that must encode to exactly one token (e.g. ``" Mary"``)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens for {self.config.name}'s tokenizer, not one: {ids}")
        return int(ids[0])


def check_token_ids(ids: np.ndarray, vocab_size: int, name: str, model: str, *, padding: bool = False) -> None:
    """Raise unless every entry of ``ids`` lies in [0, vocab_size) (or is -1 with ``padding``),
    naming the array, the first offending row (and column), the value and the allowed range."""
    ids = np.asarray(ids)
    bad = (ids < 0) | (ids >= vocab_size)
    if padding:
        bad &= ids != -1
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        index = ", ".join(map(str, where))
        allowed = f"[0, {vocab_size})" + (" or -1 (padding)" if padding else "")
        raise ValueError(
            f"{name}[{index}] = {ids[where]} is not a token id of {model}: ids must lie in {allowed} "
            f"({int(bad.sum())} entries out of range)"
        )


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> dict[str, Any] | None:
    """``{"name", "sha256", "size"}`` identifying a tokenizer's vocabulary, or None when it cannot list one.

    ``sha256`` hashes the token → id mapping (added tokens included), so two tokenizers that give
    the ids the same meaning share it whatever loaded them; ``name`` (``name_or_path``, else the
    class name) is for messages only. Computed once per tokenizer object while its size is unchanged.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        return None
    try:
        size = len(tokenizer)
    except TypeError:
        size = None
    try:
        cached = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # unhashable or not weak-referenceable: hash every time
        cached = None
    if cached is None or cached[0] != size:
        items = sorted((int(i), str(t)) for t, i in get_vocab().items())
        digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
        cached = (size, digest, len(items))
        with contextlib.suppress(TypeError):
            _FINGERPRINTS[tokenizer] = cached
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return {"name": str(name), "sha256": cached[1], "size": cached[2]}


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def pad_batch(ids: list[list[int]], *, pad_id: int = 0, padding_side: str = "right") -> TokenBatch:
    """Pad token-id lists to one [N, P] batch with an attention mask and last-token positions."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not ids or any(len(x) == 0 for x in ids):
        raise ValueError("every prompt needs at least one token")
    n, p = len(ids), max(len(x) for x in ids)
    tokens = np.full((n, p), pad_id, np.int32)
    mask = np.zeros((n, p), np.int32)
    last = np.zeros(n, np.int32)
    for i, x in enumerate(ids):
        start = 0 if padding_side == "right" else p - len(x)
        tokens[i, start : start + len(x)] = x
        mask[i, start : start + len(x)] = 1
        last[i] = start + len(x) - 1
    return TokenBatch(tokens, mask, last)
